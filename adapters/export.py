"""Package a trained adapter for the service: `out_root/name/version/`.

The exported directory holds exactly what vLLM and the service read:
`adapter_config.json`, `adapter_model.safetensors` and `manifest.json`
(`service.lora.manifest.AdapterManifest`). It is written to a temporary directory beside
the target and renamed into place, so the service never sees half an export.

Example:

    python -m adapters.export runs/smollm2/adapter --out_root adapters/exported \\
        --name smollm2-mix --version v1 --base_model_dir MODEL_DIR --temperature 1.3
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from service.calibration.query import QUERY_TEMPLATE_VERSION, LabelTokens, label_tokens, template_compatible
from service.lora.manifest import (
    NAME_PATTERN,
    AdapterManifest,
    BaseModelIdentity,
    CalibrationOutcomes,
    LabelTokenIds,
    ReferenceHistogram,
    weights_fingerprint,
)

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Written by adapters.train beside the adapter; checked when present.
TRAINING_SUMMARY = "training_summary.json"


def check_name(field: str, value: str) -> None:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"{field}: {value!r} must match {NAME_PATTERN}")


def export_config(config: dict[str, Any], *, base_model_name: str) -> dict[str, Any]:
    """adapter_config.json for serving: the base model is named, not a local path,
    because the adapter is loaded against whatever directory serves that model."""
    out = dict(config)
    if out.get("peft_type") != "LORA":
        raise ValueError(f"adapter_config.json: peft_type {out.get('peft_type')!r}, expected 'LORA'")
    if out.get("modules_to_save"):
        raise ValueError(f"adapter_config.json: modules_to_save {out['modules_to_save']!r} is not supported")
    out["base_model_name_or_path"] = base_model_name
    return out


def check_training_summary(adapter_dir: Path, *, fingerprint: str) -> dict[str, Any] | None:
    """The training summary, if the adapter has one, after checking it was trained on
    this query template and these base weights."""
    path = adapter_dir / TRAINING_SUMMARY
    if not path.is_file():
        return None
    summary: dict[str, Any] = json.loads(path.read_text())
    template = summary.get("template_version")
    if not template_compatible(str(template)):
        raise ValueError(
            f"{path}: trained on query template {template!r}, this code renders {QUERY_TEMPLATE_VERSION!r}"
        )
    trained_on = summary.get("base_model", {}).get("weights_sha256")
    if trained_on != fingerprint:
        raise ValueError(
            f"{path}: trained on base weights {trained_on}, the given base model is {fingerprint}"
        )
    return summary


def inspect_staged(staged: Path, *, fingerprint: str, tokens: LabelTokens) -> None:
    """The service's own check of a servable adapter directory, run before publishing, so
    an export the service would refuse never appears under the adapter root.

    Raises:
        ValueError: what the service would refuse the adapter for.
    """
    from service.errors import AdapterLoadError
    from service.lora.files import BaseModelInfo, inspect_adapter
    from service.settings import Settings

    # The rank limit of a service run with default settings.
    max_rank = Settings.model_fields["max_lora_rank"].default
    try:
        inspect_adapter(
            staged, BaseModelInfo(weights_sha256=fingerprint, labels=tokens, max_lora_rank=max_rank)
        )
    except AdapterLoadError as exc:
        raise ValueError(f"the service would refuse this export: {exc.message}") from exc


def export_adapter(
    adapter_dir: str | Path,
    *,
    out_root: str | Path,
    name: str,
    version: str,
    base_model_dir: str | Path,
    temperature: float,
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    reference_histogram: dict[str, Any] | None,
    base_model_name: str | None = None,
    calibration_outcomes: dict[str, Any] | None = None,
) -> Path:
    """Write out_root/name/version/ (adapter config, weights, manifest); returns it.

    base_model_name defaults to the base model directory's name. calibration_outcomes: the
    labelled logit gaps the temperature was fitted on ({split, gaps, correct}), kept with
    the version for the service's target_error_rate thresholds.

    Raises:
        ValueError: a bad name or version, an adapter that is not a plain LoRA, carries
            embedding or LM-head tensors, or was trained on another template or base.
        FileExistsError: that version is already exported (versions are immutable).
    """
    from transformers import AutoTokenizer

    check_name("name", name)
    check_name("version", version)
    adapter_dir, base_dir = Path(adapter_dir), Path(base_model_dir)
    target = Path(out_root) / name / version
    if target.exists():
        raise FileExistsError(f"{target} already exists; export a new version instead")

    base_name = base_model_name or base_dir.name
    config = export_config(json.loads((adapter_dir / ADAPTER_CONFIG).read_text()), base_model_name=base_name)
    fingerprint = weights_fingerprint(base_dir)
    check_training_summary(adapter_dir, fingerprint=fingerprint)
    tokens = label_tokens(AutoTokenizer.from_pretrained(base_dir))
    manifest = AdapterManifest(
        name=name,
        version=version,
        base_model=BaseModelIdentity(name=base_name, weights_sha256=fingerprint),
        template_version=QUERY_TEMPLATE_VERSION,
        label_token_ids=LabelTokenIds(no=tokens.no_id, yes=tokens.yes_id),
        temperature=temperature,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_data=training_data,
        metrics=metrics,
        reference_histogram=(
            ReferenceHistogram.model_validate(reference_histogram)
            if reference_histogram is not None
            else None
        ),
        calibration_outcomes=(
            CalibrationOutcomes.model_validate(calibration_outcomes)
            if calibration_outcomes is not None
            else None
        ),
    )

    # Staged as <root>/.staging-*/<name>/<version> (the registry skips hidden directories),
    # so the service's own inspection sees the layout it will serve.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_root))
    staged = staging_root / name / version
    try:
        staged.mkdir(parents=True)
        shutil.copyfile(adapter_dir / ADAPTER_WEIGHTS, staged / ADAPTER_WEIGHTS)
        (staged / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        manifest.write(staged)
        inspect_staged(staged, fingerprint=fingerprint, tokens=tokens)
        # rename is atomic within a filesystem and fails if the target appeared meanwhile.
        staged.rename(target)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    log.info("exported %s/%s to %s", name, version, target)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("adapter_dir", help="PEFT adapter directory written by adapters.train")
    parser.add_argument("--out_root", required=True, help="Root of exported adapters")
    parser.add_argument("--name", required=True, help=f"Adapter name, {NAME_PATTERN}")
    parser.add_argument("--version", required=True, help=f"Adapter version, {NAME_PATTERN}")
    parser.add_argument("--base_model_dir", required=True, help="The base model the adapter was trained on")
    parser.add_argument("--temperature", type=float, default=1.0, help="Fitted temperature (default 1.0)")
    parser.add_argument("--metrics", help="JSON file with evaluation metrics")
    parser.add_argument("--reference_histogram", help="JSON file with {bin_edges, counts}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    def load(path: str | None) -> Any:
        return json.loads(Path(path).read_text()) if path else None

    summary_path = Path(args.adapter_dir, TRAINING_SUMMARY)
    summary = load(str(summary_path)) if summary_path.is_file() else {}
    # The loss curve and identities stay in the run directory; the manifest records what was trained on.
    training_data = {
        k: v for k, v in summary.items() if k not in ("history", "base_model", "label_token_ids")
    }
    out = export_adapter(
        args.adapter_dir,
        out_root=args.out_root,
        name=args.name,
        version=args.version,
        base_model_dir=args.base_model_dir,
        temperature=args.temperature,
        training_data=training_data,
        metrics=load(args.metrics) or {},
        reference_histogram=load(args.reference_histogram),
    )
    print(out)


if __name__ == "__main__":
    main()
