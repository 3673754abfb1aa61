# Minimal CPU image (a later change completes the GPU variant and the gateway).
#   docker build -t confidence-service .
#   docker run -p 8000:8000 confidence-service
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
WORKDIR /app
ENV CONFIDENCE_HOST=0.0.0.0 CONFIDENCE_PORT=8000 \
    CONFIDENCE_MODEL_CACHE_DIR=/models PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY service ./service
COPY adapters ./adapters
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install -e ".[cpu,model]" \
 && /app/.venv/bin/pip uninstall -y torchvision torchaudio torchcodec || true
# The embedded model is fetched and converted at build time so the image starts offline.
RUN /app/.venv/bin/confidence fetch-model
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/ready')" || exit 1
CMD ["/app/.venv/bin/confidence", "serve"]
