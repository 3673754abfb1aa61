"""The OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`):
the shapes vLLM's own OpenAI server answers with, plus each choice's confidence."""
