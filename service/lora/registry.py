"""Which uncertainty adapters are served, under which names, and which one is the default.

Layout on disk: `<root>/<name>/<version>/` holding the PEFT files and `manifest.json`.
Several versions of a name can be loaded at once; each name has a *current* version
(what `adapter: "name"` gets) and one name is the *default* (what a request naming no
adapter gets). `name@version` pins a version.

All state changes are plain assignments made on the event loop with no `await` in
between, so a switch is atomic: a request resolves its adapter once, at its start, and
holds a lease on it until it ends; requests already running finish on the version they
started with, new requests see the new one. Unloading waits for the leases to drain.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.base import LoRA
from service.errors import (
    AdapterConflictError,
    AdapterNotFoundError,
    AdapterUnavailableError,
    NoAdapterLoadedError,
    ServiceError,
)
from service.lora.files import (
    BaseModelInfo,
    adapter_dir,
    inspect_adapter,
    newest_version_dir,
    parse_spec,
    version_key,
)
from service.lora.manifest import AdapterManifest
from service.lora.snapshot import AdapterSnapshots

log = logging.getLogger(__name__)

__all__ = ["AdapterRegistry", "BaseModelInfo", "LoadedAdapter"]


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a synchronous caller)
        return None


@dataclass(eq=False)
class LoadedAdapter:
    name: str
    version: str
    temperature: float
    lora: LoRA
    manifest: AdapterManifest
    loaded_at: float = field(default_factory=time.time)
    requests_served: int = 0
    in_flight: int = 0
    retired: bool = False
    aborted: bool = False
    _idle: asyncio.Event | None = None
    _holders: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    async def drained(self) -> None:
        """Returns once no request holds this adapter."""
        if self.in_flight == 0:
            return
        self._idle = self._idle or asyncio.Event()
        await self._idle.wait()

    def abort_holders(self) -> int:
        """Cancel the requests still holding this adapter (their engine work is aborted; each
        answers 503). Returns how many there were."""
        self.aborted = True
        for task in self._holders:
            task.cancel()
        return len(self._holders)

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()


class AdapterRegistry:
    def __init__(
        self,
        root: Path,
        base: BaseModelInfo,
        *,
        default: str | None = None,
        snapshots: AdapterSnapshots | None = None,
    ) -> None:
        self.root = root
        self.base = base
        # None: serve straight from the adapter root (which must then stay as it is).
        self.snapshots = snapshots
        self.default = default  # a name; its current version serves requests that name none
        self._loaded: dict[str, dict[str, LoadedAdapter]] = {}
        self._current: dict[str, str] = {}
        # name, or name@version beside served versions of the name -> (public reason, full message)
        self._rejected: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1)
        # Earlier defaults (name@version), most recent last: what a rollback returns to.
        self._default_history: list[str] = []

    # ------------------------------------------------------------ start-up

    def scan(self) -> None:
        """Stage the newest valid version of every adapter under the root (start-up)."""
        if not self.root.is_dir():
            log.warning("adapter root %s does not exist: zero-shot confidence only", self.root)
            return
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            newest = newest_version_dir(name_dir, trained_only=True)
            if newest is None:
                continue
            try:
                adapter = self.prepare(name_dir.name, newest.name)
                try:
                    self.add(adapter)
                except ServiceError:
                    self.discard(adapter)
                    raise
            except ServiceError as exc:
                self.refuse(name_dir.name, newest.name, exc)

    # ------------------------------------------------------------ changes

    def prepare(self, name: str, version: str) -> LoadedAdapter:
        """Validate `<root>/<name>/<version>` and give it its own LoRA identity (not yet served).

        Each loaded version gets a fresh vLLM name and int id, so it never shares the
        engine's LoRA slot or prefix-cache blocks with another version of the same name.
        """
        path = adapter_dir(self.root, name, version)
        uid = next(self._ids)
        if self.snapshots is not None:
            path = self.snapshots.take(path, uid)  # validated and served: the same bytes
        try:
            manifest = inspect_adapter(path, self.base)
        except ServiceError:
            if self.snapshots is not None:
                self.snapshots.drop(path)
            raise
        lora = LoRA(name=f"{name}@{version}#{uid}", int_id=uid, path=path)
        return LoadedAdapter(name, version, manifest.temperature, lora, manifest)

    def refuse(self, name: str, version: str, error: ServiceError) -> None:
        """List `name@version` as refused, with the error's public reason (and the full message
        for the admin API). It is listed under its name while no version of the name is served
        (requests naming it then get the reason), else under `name@version`."""
        key = f"{name}@{version}" if name in self._loaded else name
        self._rejected[key] = (getattr(error, "reason", error.error_type), error.message)
        log.error("not serving adapter %s@%s: %s", name, version, error.message)

    def reject(self, adapter: LoadedAdapter, error: ServiceError) -> None:
        """Stop serving an adapter staged at start-up that failed its warm-up (no request holds
        it yet), delete its files and list it as refused."""
        versions = self._loaded.get(adapter.name, {})
        if versions.get(adapter.version) is adapter:
            del versions[adapter.version]
            if not versions:
                del self._loaded[adapter.name], self._current[adapter.name]
            elif self._current[adapter.name] == adapter.version:
                self._current[adapter.name] = max(versions, key=version_key)
        self.discard(adapter)
        self.refuse(adapter.name, adapter.version, error)

    def discard(self, adapter: LoadedAdapter) -> None:
        """Delete the files of a prepared adapter the engine no longer (or never) serves."""
        if self.snapshots is not None:
            self.snapshots.drop(adapter.lora.path)

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.close()

    def add(self, adapter: LoadedAdapter, *, make_current: bool = False) -> None:
        """Serve `adapter`; it becomes its name's current version if asked or if it is the first."""
        versions = self._loaded.setdefault(adapter.name, {})
        if adapter.version in versions:
            raise AdapterConflictError(f"adapter {adapter.spec} is already loaded", param="version")
        versions[adapter.version] = adapter
        if make_current or adapter.name not in self._current:
            self._current[adapter.name] = adapter.version
        self._rejected.pop(adapter.name, None)
        self._rejected.pop(adapter.spec, None)
        log.info("serving adapter %s (T=%.3f)", adapter.spec, adapter.temperature)

    def set_default(self, spec: str) -> LoadedAdapter:
        """Make `name[@version]` the default: its name becomes the default and the version
        that name's current one. One step, no await: atomic for requests."""
        previous = self.default_adapter()
        adapter = self.resolve(spec)
        self._current[adapter.name] = adapter.version
        self.default = adapter.name
        if previous is not None and previous is not adapter:
            self._default_history.append(previous.spec)
        log.info("default adapter is now %s", adapter.spec)
        return adapter

    def rollback(self, name: str) -> LoadedAdapter:
        """Make the previous default (the newest earlier one still loaded) the default again.

        Raises:
            AdapterConflictError: `name` is not the default, or no earlier default is loaded.
        """
        current = self.default_adapter()
        if current is None or current.name != name:
            default = current.spec if current else "none"
            raise AdapterConflictError(
                f"adapter {name!r} is not the default ({default}): nothing to roll back",
                param="name",
            )
        while self._default_history:
            spec = self._default_history.pop()
            try:
                adapter = self.resolve(spec)
            except ServiceError:
                continue  # unloaded since: roll back further
            self._current[adapter.name] = adapter.version
            self.default = adapter.name
            log.info("default adapter rolled back from %s to %s", current.spec, adapter.spec)
            return adapter
        raise AdapterConflictError(
            f"no earlier default of {name!r} is still loaded to roll back to", param="name"
        )

    @property
    def previous_default(self) -> str | None:
        """What a rollback would return to first (it may have been unloaded since)."""
        return self._default_history[-1] if self._default_history else None

    def retire(self, spec: str) -> LoadedAdapter:
        """Stop routing new requests to `name@version`; in-flight ones keep their lease.

        Raises:
            AdapterConflictError: it is what requests naming no adapter get.
        """
        name, version = parse_spec(spec)
        adapter = self.resolve(spec if version else f"{name}@{self._current.get(name, '')}")
        if adapter.name == self.default and self._current.get(adapter.name) == adapter.version:
            raise AdapterConflictError(
                f"adapter {adapter.spec} is the default; make another adapter the default first",
                param="adapter",
            )
        versions = self._loaded[adapter.name]
        del versions[adapter.version]
        adapter.retired = True
        if not versions:
            del self._loaded[adapter.name], self._current[adapter.name]
        elif self._current[adapter.name] == adapter.version:
            self._current[adapter.name] = max(versions, key=version_key)
        log.info("retired adapter %s (%d requests in flight)", adapter.spec, adapter.in_flight)
        return adapter

    # ------------------------------------------------------------ lookups

    def list(self) -> list[LoadedAdapter]:
        return [a for versions in self._loaded.values() for a in versions.values()]

    def is_current(self, adapter: LoadedAdapter) -> bool:
        return self._current.get(adapter.name) == adapter.version

    def default_adapter(self) -> LoadedAdapter | None:
        if self.default is None or self.default not in self._current:
            return None
        return self._loaded[self.default][self._current[self.default]]

    @property
    def rejected(self) -> dict[str, str]:
        """Adapters refused (at start-up or by an admin load) and a short reason each, without
        paths or contents."""
        return {name: reason for name, (reason, _) in self._rejected.items()}

    @property
    def rejected_details(self) -> dict[str, str]:
        """The full reasons (for the admin API: they may name paths and quote files)."""
        return {name: message for name, (_, message) in self._rejected.items()}

    def resolve(self, spec: str | None) -> LoadedAdapter:
        """The adapter a request asked for (`name`, `name@version`), or the default.

        Raises:
            InvalidRequestError: the spec is not a valid name[@version].
            AdapterNotFoundError: the named adapter (version) is not served.
            NoAdapterLoadedError: no name given and no default adapter is being served.
        """
        if spec is None:
            default = self.default_adapter()
            if default is None:
                why = self.rejected.get(self.default or "", "no trained uncertainty adapter is loaded")
                raise NoAdapterLoadedError(
                    f"method 'adapter' needs an uncertainty adapter: {why}; "
                    "use method 'zero_shot' or name an adapter",
                    param="adapter",
                )
            return default
        name, version = parse_spec(spec)
        versions = self._loaded.get(name)
        if versions is None:
            rejected = self.rejected.get(name)
            detail = f" ({rejected})" if rejected else f"; served adapters: {sorted(self._loaded) or 'none'}"
            raise AdapterNotFoundError(f"adapter {name!r} is not served{detail}", param="adapter")
        version = version or self._current[name]
        if version not in versions:
            loaded = sorted(versions, key=version_key)
            raise AdapterNotFoundError(
                f"adapter {name}@{version} is not loaded; loaded versions: {loaded}",
                param="adapter",
            )
        return versions[version]

    @contextmanager
    def lease(self, spec: str | None) -> Iterator[LoadedAdapter]:
        """Resolve once and hold the adapter for the whole request (unload waits for it)."""
        adapter = self.resolve(spec)
        task = _current_task()
        adapter.in_flight += 1
        adapter.requests_served += 1
        if task is not None:
            adapter._holders.add(task)
        try:
            yield adapter
        except asyncio.CancelledError:
            if not adapter.aborted or task is None:
                raise
            task.uncancel()  # not the client's or the server's cancel: answer, with a reason
            raise AdapterUnavailableError(
                f"adapter {adapter.spec} was unloaded while this request was still using it; retry"
            ) from None
        finally:
            if task is not None:
                adapter._holders.discard(task)
            adapter._release()
