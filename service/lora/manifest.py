"""`manifest.json`: what an exported uncertainty adapter claims about itself.

The training job writes it next to the PEFT files; the service reads it before loading
an adapter and refuses one trained for another base model or another query template.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.calibration.estimator import HeadParams

MANIFEST_FILE = "manifest.json"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class BaseModelIdentity(BaseModel):
    name: str
    weights_sha256: str = Field(description="sha256 over the model's weight files, see weights_fingerprint")


class LabelTokenIds(BaseModel):
    no: int
    yes: int


class ReferenceHistogram(BaseModel):
    """Confidences on held-out data: the drift monitor compares live traffic against it."""

    bin_edges: list[float] = Field(min_length=2)
    counts: list[int]

    @model_validator(mode="after")
    def _valid(self) -> ReferenceHistogram:
        edges = self.bin_edges
        if not all(math.isfinite(e) and 0.0 <= e <= 1.0 for e in edges):
            raise ValueError("bin_edges must be finite probabilities in [0, 1]")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("bin_edges must increase strictly")
        if len(self.counts) != len(edges) - 1 or any(c < 0 for c in self.counts) or not sum(self.counts):
            raise ValueError("counts must be one non-negative count per bin, not all zero")
        return self


class CalibrationOutcomes(BaseModel):
    """The labelled split the temperature was fitted on, as logit gaps (so confidences follow
    any later temperature): thresholds for target_error_rate rest on it until enough live
    labels arrive."""

    split: str = Field(description="Which data: e.g. 'calibration' (+ MMLU validation).")
    gaps: list[float] = Field(description="logit(yes) - logit(no) of each item, before temperature.")
    correct: list[bool]

    @model_validator(mode="after")
    def _same_length(self) -> CalibrationOutcomes:
        if len(self.gaps) != len(self.correct):
            raise ValueError(f"{len(self.gaps)} gaps but {len(self.correct)} labels")
        return self


class AdapterManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    base_model: BaseModelIdentity
    template_version: str
    label_token_ids: LabelTokenIds
    # Temperatures fitted on real data lie far inside this range; 1e999 (inf) or NaN would
    # load and then fail every request.
    temperature: float = Field(gt=0.01, le=100.0, allow_inf_nan=False)
    created_at: str | None = None
    training_data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    reference_histogram: ReferenceHistogram | None = None
    calibration_outcomes: CalibrationOutcomes | None = None
    # The calibrated head of this version (method "calibrated_head") and the histogram of
    # its confidences on held-out data; absent in versions exported before it existed.
    head: HeadParams | None = None
    head_reference_histogram: ReferenceHistogram | None = None

    @classmethod
    def read(cls, adapter_dir: Path) -> AdapterManifest:
        return cls.model_validate_json((adapter_dir / MANIFEST_FILE).read_text())

    def write(self, adapter_dir: Path) -> None:
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False)
        (adapter_dir / MANIFEST_FILE).write_text(text + "\n")


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    return files


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files (name and content, in name order).

    The result is cached beside the model keyed by each file's size and mtime, so a
    multi-GB model is hashed once, not at every start.
    """
    files = weight_files(model_dir)
    key = "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache = model_dir / ".weights_sha256.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["sha256"])
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    result = digest.hexdigest()
    # A read-only model directory is fine: we just hash again next time.
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"key": key, "sha256": result}))
    return result
