"""Uncertainty adapters the service can serve, found under the adapter root.

Layout: `<root>/<name>/<version>/` holding the PEFT files and `manifest.json`. At start
each name's newest version is validated against the served base model and the query
template; adapters that do not match are skipped with the reason kept, so a request for
one gets a message that says why instead of silently mis-calibrated confidences.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.confidence import QUERY_TEMPLATE_VERSION, LabelTokens
from service.engine.base import LoRA
from service.errors import AdapterLoadError, AdapterNotFoundError, NoAdapterLoadedError
from service.manifest import MANIFEST_FILE, AdapterManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    version: str
    temperature: float
    lora: LoRA
    manifest: AdapterManifest


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter's manifest must match to be served on this model."""

    weights_sha256: str | None  # None: the model is not a local directory (cannot be checked)
    labels: LabelTokens


def _version_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order, so v10 sorts after v9."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p]


def validate_manifest(manifest: AdapterManifest, base: BaseModelInfo) -> None:
    """Raise AdapterLoadError if the adapter was trained for another model or template."""
    if manifest.template_version != QUERY_TEMPLATE_VERSION:
        raise AdapterLoadError(
            f"adapter {manifest.name}/{manifest.version} was trained with query template "
            f"{manifest.template_version!r}; this service renders {QUERY_TEMPLATE_VERSION!r}"
        )
    if base.weights_sha256 is not None and manifest.base_model.weights_sha256 != base.weights_sha256:
        raise AdapterLoadError(
            f"adapter {manifest.name}/{manifest.version} was trained for base model "
            f"{manifest.base_model.name!r} (weights {manifest.base_model.weights_sha256[:12]}…), "
            f"not the served model (weights {base.weights_sha256[:12]}…)"
        )
    ids = manifest.label_token_ids
    if (ids.no, ids.yes) != (base.labels.no_id, base.labels.yes_id):
        raise AdapterLoadError(
            f"adapter {manifest.name}/{manifest.version} reads label tokens {ids.no}/{ids.yes}; "
            f"the served tokenizer gives {base.labels.no_id}/{base.labels.yes_id}"
        )


class AdapterRegistry:
    def __init__(self, root: Path, base: BaseModelInfo, *, default: str | None = None) -> None:
        self.root = root
        self.base = base
        self.default = default
        self._adapters: dict[str, LoadedAdapter] = {}
        self._rejected: dict[str, str] = {}
        self._ids = itertools.count(1)

    def scan(self) -> None:
        """Load the newest valid version of every adapter under the root."""
        if not self.root.is_dir():
            log.warning("adapter root %s does not exist: zero-shot confidence only", self.root)
            return
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = [
                v for v in name_dir.iterdir() if not v.name.startswith(".") and (v / MANIFEST_FILE).is_file()
            ]
            if not versions:
                continue
            newest = max(versions, key=lambda v: _version_key(v.name))
            try:
                self.add(newest)
            except AdapterLoadError as exc:
                self._rejected[name_dir.name] = exc.message
                log.error("not serving adapter %s: %s", name_dir.name, exc.message)

    def add(self, adapter_dir: Path) -> LoadedAdapter:
        try:
            manifest = AdapterManifest.read(adapter_dir)
        except (OSError, ValidationError, ValueError) as exc:
            raise AdapterLoadError(f"{adapter_dir}: unreadable manifest: {exc}") from exc
        validate_manifest(manifest, self.base)
        lora = LoRA(name=manifest.name, int_id=next(self._ids), path=adapter_dir)
        loaded = LoadedAdapter(manifest.name, manifest.version, manifest.temperature, lora, manifest)
        self._adapters[manifest.name] = loaded
        self._rejected.pop(manifest.name, None)
        log.info("serving adapter %s/%s (T=%.3f)", loaded.name, loaded.version, loaded.temperature)
        return loaded

    def list(self) -> list[LoadedAdapter]:
        return list(self._adapters.values())

    def resolve(self, name: str | None) -> LoadedAdapter:
        """The adapter a request asked for, or the default.

        Raises:
            AdapterNotFoundError: the named adapter is not served.
            NoAdapterLoadedError: no name given and no default adapter is being served.
        """
        if name is None:
            if self.default is None or self.default not in self._adapters:
                why = self._rejected.get(self.default or "", "no trained uncertainty adapter is loaded")
                raise NoAdapterLoadedError(
                    f"method 'adapter' needs an uncertainty adapter: {why}; "
                    "use method 'zero_shot' or name an adapter",
                    param="adapter",
                )
            return self._adapters[self.default]
        if name in self._adapters:
            return self._adapters[name]
        rejected = self._rejected.get(name)
        detail = f" ({rejected})" if rejected else f"; served adapters: {sorted(self._adapters) or 'none'}"
        raise AdapterNotFoundError(f"adapter {name!r} is not served{detail}", param="adapter")
