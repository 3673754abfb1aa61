"""Private copies of loaded adapters: what vLLM reads, and re-reads, while they are served.

vLLM keeps only `max_cpu_loras` adapters in memory and re-reads the others from their
directory when a request needs them. If that directory has meanwhile been deleted or
rewritten (an operator cleaning up old versions, a redeploy replacing the adapter root),
vLLM 0.32's worker fails the load inside the model step and the whole engine core dies,
taking every in-flight request with it. So each version is copied, when it is loaded,
into a directory this process owns; the copy is validated and served, and dropped when
the version is unloaded. A loaded version therefore keeps serving exactly the weights it
was validated with, whatever happens to the adapter root.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from service.errors import AdapterLoadError
from service.lora.files import CONFIG_FILE, WEIGHTS_FILE
from service.lora.manifest import MANIFEST_FILE

SERVED_FILES = (MANIFEST_FILE, CONFIG_FILE, WEIGHTS_FILE)


class AdapterSnapshots:
    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="confidence-adapters-", dir=parent))

    def take(self, source: Path, uid: int) -> Path:
        """Copy `<root>/<name>/<version>` to `<snapshots>/<uid>/<name>/<version>` and return the copy.

        Raises:
            AdapterLoadError: a file vLLM needs could not be read (missing, deleted meanwhile).
        """
        dest = self.root / str(uid) / source.parent.name / source.name
        dest.mkdir(parents=True)
        try:
            for name in SERVED_FILES:
                shutil.copyfile(source / name, dest / name)
        except OSError as exc:
            self.drop(dest)
            raise AdapterLoadError(
                f"adapter {source.parent.name}@{source.name}: cannot read {exc.filename or source}: "
                f"{exc.strerror or exc}"
            ) from exc
        return dest

    def drop(self, copy: Path) -> None:
        """Delete a copy made by `take` (once the engine no longer serves it)."""
        if copy.is_relative_to(self.root):
            shutil.rmtree(self.root / copy.relative_to(self.root).parts[0], ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
