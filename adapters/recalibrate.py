"""`confidence recalibrate`: refit a served version's calibration on live labels.

    confidence recalibrate --adapter smollm2-135m-uncertainty@v6 --window 30d
    confidence recalibrate --adapter smollm2-135m-uncertainty@v6 --promote --url http://127.0.0.1:8000

1. Reads the labelled outcomes of NAME@VERSION read with one method (`--method`; by default
   the one requests naming none get: `calibrated_head` when the version has a head, else
   `adapter`) from the outcome store, feedback received within the window, and splits them
   by a hash of the response id into a fitting part and a held-out part (the same labels
   always land on the same side).
2. Refits that method's calibration on the fitting part, from the served confidences alone:
   - `adapter`: the temperature. Served confidences are sigmoid(g / T), so the logit gaps
     come back exactly as g = T * logit(confidence).
   - `calibrated_head`: a Platt rescaling sigmoid(a * z + b) of the head's logit
     z = logit(confidence), written back into the head (every coefficient times a, the
     intercept a * intercept + b), so the new version's head serves exactly the rescaled
     confidences. The features, their scaling and the adapter's temperature are unchanged.
3. Writes NAME/<VERSION>-recalN: the same LoRA files, the refit calibration, for `adapter`
   the labels it rests on as the version's calibration split (thresholds for
   target_error_rate), and its provenance (method, window, label counts and ids, the
   comparison below).
4. Compares new against current on the held-out labels: ECE, Brier, AUROC with bootstrap
   intervals and paired intervals of the differences. "Better" means the paired ECE
   difference's interval lies below 0 and Brier does not get worse.
5. With --promote, and only if better: loads the new version and makes it the default
   through the admin API. Otherwise nothing served changes and the output says why.

The service never starts a version this command wrote by itself (see
service.lora.files.newest_version_dir): it serves once promoted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.calibration import metrics as calib
from service.calibration.estimator import HeadParams
from service.feedback.store import Outcome, OutcomeStore
from service.lora.files import CONFIG_FILE, WEIGHTS_FILE, adapter_dir, parse_spec
from service.lora.manifest import AdapterManifest, CalibrationOutcomes

log = logging.getLogger(__name__)

WINDOW_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PROVENANCE_FILE = "recalibration_labels.json"
# Keeps logit() finite for a stored confidence of exactly 0 or 1.
CLIP = 1e-12
METHODS = ("adapter", "calibrated_head")  # zero_shot has no fitted calibration of its own here


class RecalibrationError(Exception):
    """The refit cannot run as asked (too few labels, a bad window, an unknown version)."""


class TooFewLabelsError(RecalibrationError):
    """Not enough labelled outcomes in the window (reported as outcome too_few_labels)."""


@dataclass(frozen=True)
class Recalibration:
    """What `recalibrate` did: the new version (if written) and the held-out comparison."""

    adapter: str
    current: str
    candidate: str | None
    better: bool
    reason: str
    report: dict[str, Any]


def parse_window(window: str) -> float:
    match = re.fullmatch(r"([0-9]+)([smhd])", window)
    if not match or int(match.group(1)) <= 0:
        raise RecalibrationError(f"--window {window!r}: use a positive number and s, m, h or d (e.g. 30d)")
    return float(int(match.group(1)) * WINDOW_UNITS_S[match.group(2)])


def holdout_side(outcome: Outcome, fraction: float) -> bool:
    """Whether a label is held out: a hash of its response, so items of one /score response
    stay together and a rerun on more labels keeps earlier ones on their side."""
    digest = hashlib.sha256(outcome.response_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def gaps_of(outcomes: list[Outcome], temperature: float) -> np.ndarray:
    """The logit gaps behind served confidences: g = T * logit(p)."""
    from scipy.special import logit

    p = np.clip(np.array([o.confidence for o in outcomes], dtype=np.float64), CLIP, 1.0 - CLIP)
    return np.asarray(temperature * logit(p), dtype=np.float64)


def compare(p_new: np.ndarray, p_old: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Held-out metrics of both versions with intervals, and paired differences (new - old)."""
    out: dict[str, Any] = {"n": int(y.size), "n_correct": int(y.sum())}
    for role, p in (("candidate", p_new), ("current", p_old)):
        out[role] = {
            name: {"value": fn(p, y), "ci": list(calib.bootstrap_ci(fn, p, y, n=n_boot, seed=seed))}
            for name, fn in (("ece", calib.ece), ("brier", calib.brier), ("auroc", calib.auroc))
        }
    out["difference"] = {
        name: calib.paired_bootstrap_diff(fn, p_new, p_old, y, n=n_boot, seed=seed)
        for name, fn in (("ece", calib.ece), ("brier", calib.brier))
    }
    result: dict[str, Any] = calib.nan_to_none(out)
    return result


def verdict(comparison: dict[str, Any]) -> tuple[bool, str]:
    ece, brier = comparison["difference"]["ece"], comparison["difference"]["brier"]
    if ece["ci_high"] is None or ece["ci_high"] >= 0:
        return False, (
            f"held-out ECE difference {ece['estimate']:+.4f} has a 95% CI "
            f"[{ece['ci_low']:+.4f}, {ece['ci_high']:+.4f}] that does not lie below 0"
        )
    if brier["estimate"] > 0:
        return False, f"ECE is lower but Brier is worse by {brier['estimate']:+.4f}"
    return True, (
        f"held-out ECE {comparison['current']['ece']['value']:.4f} -> "
        f"{comparison['candidate']['ece']['value']:.4f}, difference CI "
        f"[{ece['ci_low']:+.4f}, {ece['ci_high']:+.4f}]; Brier {brier['estimate']:+.4f}"
    )


def next_version(root: Path, name: str, version: str) -> str:
    taken = {p.name for p in (root / name).iterdir()} if (root / name).is_dir() else set()
    k = 1
    while f"{version}-recal{k}" in taken:
        k += 1
    return f"{version}-recal{k}"


@dataclass(frozen=True)
class Refit:
    """One method's refit: what it fitted (provenance), the manifest fields it changes, and
    both versions' confidences on the held-out labels."""

    fitted: dict[str, Any]
    updates: dict[str, Any]
    candidate: np.ndarray
    current: np.ndarray


def default_method(manifest: AdapterManifest) -> str:
    """The method requests that name none are read with (service.serving.core.method_for)."""
    return "calibrated_head" if manifest.head is not None else "adapter"


def refit_adapter(
    manifest: AdapterManifest, outcomes: list[Outcome], held: np.ndarray, y: np.ndarray, split: str
) -> Refit:
    """The temperature, refit on the fitting side; the labels become the calibration split."""
    from adapters.calibrate import apply_temperature, fit_temperature

    g = gaps_of(outcomes, manifest.temperature)
    fit = fit_temperature(g[~held], y[~held])
    calibration = CalibrationOutcomes(split=split, gaps=g.tolist(), correct=[bool(v) for v in y])
    fitted: dict[str, Any] = {"temperature": fit.to_dict()}
    if manifest.head is not None:
        fitted["head"] = "not refit: copied unchanged (refit it with --method calibrated_head)"
    return Refit(
        fitted=fitted,
        updates={"temperature": fit.temperature, "calibration_outcomes": calibration.model_dump(mode="json")},
        candidate=apply_temperature(g[held], fit.temperature),
        current=apply_temperature(g[held], manifest.temperature),
    )


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and offset of sigmoid(a * z + b) by maximum likelihood (unpenalized)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf).fit(z.reshape(-1, 1), y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def rescaled_head(head: HeadParams, slope: float, offset: float) -> HeadParams:
    """The head whose logit is slope * (this head's logit) + offset."""
    return HeadParams.model_validate(
        {
            **head.model_dump(),
            "coef": [slope * c for c in head.coef],
            "intercept": slope * head.intercept + offset,
        }
    )


def refit_head(manifest: AdapterManifest, outcomes: list[Outcome], held: np.ndarray, y: np.ndarray) -> Refit:
    """A Platt rescaling of the head's logit, refit on the fitting side.

    Raises:
        RecalibrationError: the version has no head, or the live labels rank the head's
            confidences backwards (a rescaling would then reverse what the head ranks).
    """
    from scipy.special import expit

    if manifest.head is None:
        raise RecalibrationError(f"{manifest.name}@{manifest.version} has no head: use --method adapter")
    z = gaps_of(outcomes, 1.0)
    slope, offset = fit_platt(z[~held], y[~held])
    if slope <= 0:
        raise RecalibrationError(
            f"the live labels rank the head's confidences backwards (fitted slope {slope:.3f}): "
            "a rescaling would reverse its ranking; look at the labels before recalibrating"
        )
    head = rescaled_head(manifest.head, slope, offset)
    fitted = {"head": {"slope": slope, "offset": offset, "n": int((~held).sum())}, "temperature": "unchanged"}
    return Refit(
        fitted=fitted,
        updates={"head": head.model_dump(mode="json")},
        candidate=np.asarray(expit(slope * z[held] + offset), dtype=np.float64),
        current=np.asarray(expit(z[held]), dtype=np.float64),
    )


def write_version(
    root: Path,
    manifest: AdapterManifest,
    new_version: str,
    *,
    updates: dict[str, Any],
    provenance: dict[str, Any],
    label_ids: dict[str, list[str]],
) -> Path:
    """`<root>/<name>/<new_version>`: the current version's LoRA files (hard links where the
    filesystem allows: the weights are shared, not changed) and the new manifest."""
    source = root / manifest.name / manifest.version
    target = root / manifest.name / new_version
    staging = Path(tempfile.mkdtemp(prefix=f".{new_version}.", dir=target.parent))
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            try:
                os.link(source / name, staging / name)
            except OSError:
                shutil.copyfile(source / name, staging / name)
        fields = {
            **manifest.model_dump(mode="json"),
            "version": new_version,
            **updates,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "recalibration": provenance,
        }
        AdapterManifest.model_validate(fields).write(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(label_ids) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only
        staging.rename(target)  # atomic; fails if the version appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def recalibrate(
    store: OutcomeStore,
    root: Path,
    spec: str,
    *,
    window_s: float,
    holdout: float = 0.3,
    min_labels: int = 100,
    n_boot: int = 1000,
    seed: int = 0,
    now: float | None = None,
    method: str | None = None,
) -> Recalibration:
    """Refit NAME@VERSION on its live labels, write the new version, compare on held-out labels.

    Raises:
        RecalibrationError: a bad spec, holdout or window, or fewer than `min_labels` labels
            (or a side without both outcomes).
        FeedbackStoreError: the outcome store is unavailable.
    """
    name, version = parse_spec(spec)
    if version is None:
        raise RecalibrationError(f"--adapter {spec!r}: give NAME@VERSION (the version to refit)")
    if not 0.0 < holdout < 1.0:
        raise RecalibrationError(f"--holdout {holdout}: must be in (0, 1)")
    manifest = AdapterManifest.read(adapter_dir(root, name, version))
    now = time.time() if now is None else now
    since = now - window_s
    method = method or default_method(manifest)
    if method not in METHODS:
        raise RecalibrationError(f"--method {method!r}: refits exist for {', '.join(METHODS)}")
    outcomes = store.outcomes(labelled_since=since, adapter=name, version=version, method=method)
    if len(outcomes) < min_labels:
        raise TooFewLabelsError(
            f"{spec} has {len(outcomes)} labelled outcomes of method {method} in the window; "
            f"at least {min_labels} are needed"
        )
    held = np.array([holdout_side(o, holdout) for o in outcomes])
    y = np.array([float(bool(o.correct)) for o in outcomes])
    for side, mask in (("fitting", ~held), ("held-out", held)):
        if len(set(y[mask].tolist())) < 2:
            raise RecalibrationError(
                f"the {side} labels of {spec} are all one outcome: nothing to fit or compare"
            )
    if method == "adapter":
        split = f"live labels of {spec}, feedback within {window_s:.0f} s before {now:.0f}"
        refit = refit_adapter(manifest, outcomes, held, y, split)
    else:
        refit = refit_head(manifest, outcomes, held, y)
    comparison = compare(refit.candidate, refit.current, y[held], n_boot=n_boot, seed=seed)
    better, reason = verdict(comparison)
    new_version = next_version(root, name, version)
    provenance = {
        "parent": version,
        "method": method,
        "window_s": window_s,
        "labelled_since": since,
        "labelled_until": now,
        "n_labels": len(outcomes),
        "n_fit": int((~held).sum()),
        "n_holdout": int(held.sum()),
        "holdout_fraction": holdout,
        "label_ids_file": PROVENANCE_FILE,
        "refit": refit.fitted,
        "heldout_comparison": comparison,
        "better": better,
        "reason": reason,
    }
    ids = [f"{o.response_id}:{o.index}" for o in outcomes]
    write_version(
        root,
        manifest,
        new_version,
        updates=refit.updates,
        provenance=provenance,
        label_ids={
            "fit": [i for i, h in zip(ids, held, strict=True) if not h],
            "holdout": [i for i, h in zip(ids, held, strict=True) if h],
        },
    )
    return Recalibration(
        adapter=name,
        current=spec,
        candidate=f"{name}@{new_version}",
        better=better,
        reason=reason,
        report=provenance,
    )


def promote(result: Recalibration, *, url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """Load the candidate and make it the default through the admin API.

    Raises:
        service.admin_client.AdminError: the server refused or could not be reached.
    """
    from service.admin_client import call

    assert result.candidate is not None
    name, version = parse_spec(result.candidate)
    args = argparse.Namespace(
        op="load", url=url, token=token, timeout=timeout, name=name, version=version, default=True
    )
    return call(args)


def attach_shadow(
    result: Recalibration, *, fraction: float, url: str, token: str | None, timeout: float
) -> dict[str, Any]:
    """Load the candidate (not as default) and attach it as the default's shadow, so that
    `confidence adapters promote-shadow` can promote it on evidence from live traffic.

    Raises:
        service.admin_client.AdminError: the server refused or could not be reached.
    """
    from service.admin_client import call

    assert result.candidate is not None
    name, version = parse_spec(result.candidate)
    common = {"url": url, "token": token, "timeout": timeout}
    call(argparse.Namespace(op="load", name=name, version=version, default=False, **common))
    shadow = argparse.Namespace(op="shadow", adapter=result.candidate, fraction=fraction, off=False, **common)
    return call(shadow)


def report_outcome(
    adapter: str, outcome: str, report: dict[str, Any], *, url: str, token: str | None
) -> None:
    """Tell the server (metrics: confidence_recalibrations_total); best effort."""
    import httpx

    comparison = report.get("heldout_comparison", {})
    body = {
        "adapter": adapter,
        "outcome": outcome,
        "current_ece": (comparison.get("current") or {}).get("ece", {}).get("value"),
        "candidate_ece": (comparison.get("candidate") or {}).get("ece", {}).get("value"),
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        httpx.post(f"{url}/admin/recalibrations", json=body, headers=headers, timeout=10.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("could not report the recalibration outcome to %s: %s", url, exc)


def build_parser() -> argparse.ArgumentParser:
    from service.admin_client import DEFAULT_URL

    parser = argparse.ArgumentParser(prog="confidence recalibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="NAME@VERSION to refit")
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="whose calibration to refit, from the labels of requests read with it "
        "(default: the version's default method: calibrated_head when it has a head)",
    )
    parser.add_argument("--window", default="30d", help="feedback received within this long (30d, 12h, …)")
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="fraction of labels held out for the comparison"
    )
    parser.add_argument("--min-labels", type=int, default=100, help="refuse with fewer labels in the window")
    parser.add_argument(
        "--adapter-root", type=Path, help="default: $CONFIDENCE_ADAPTER_ROOT or the shipped root"
    )
    parser.add_argument("--promote", action="store_true", help="load and make default if better (admin API)")
    parser.add_argument(
        "--shadow",
        type=float,
        metavar="FRACTION",
        help="if better, load it as the default's shadow scoring this share of requests (promote later "
        "on shadow evidence: confidence adapters promote-shadow)",
    )
    parser.add_argument("--url", default=os.environ.get("CONFIDENCE_URL", DEFAULT_URL), help="server URL")
    parser.add_argument(
        "--token", default=os.environ.get("CONFIDENCE_ADMIN_TOKEN"), help="admin bearer token"
    )
    parser.add_argument("--report", action="store_true", help="report the outcome to the server's metrics")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the admin calls")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    return parser


def main(argv: list[str]) -> int:
    from service.admin_client import AdminError
    from service.errors import FeedbackStoreError
    from service.feedback.store import open_store
    from service.settings import Settings

    args = build_parser().parse_args(argv)
    settings = Settings()
    root = args.adapter_root or settings.adapter_root
    store = open_store(db_url=settings.feedback_db_url, db_path=settings.feedback_db_path)
    try:
        result = recalibrate(
            store,
            root,
            args.adapter,
            window_s=parse_window(args.window),
            holdout=args.holdout,
            min_labels=args.min_labels,
            n_boot=args.n_boot,
            method=args.method,
        )
    except (RecalibrationError, FeedbackStoreError) as exc:
        if isinstance(exc, TooFewLabelsError) and args.report:
            report_outcome(parse_spec(args.adapter)[0], "too_few_labels", {}, url=args.url, token=args.token)
        print(f"confidence recalibrate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    outcome = "better" if result.better else "not_better"
    if args.promote and result.better:
        try:
            promote(result, url=args.url, token=args.token, timeout=args.timeout)
        except AdminError as exc:
            print(
                f"confidence recalibrate: {result.candidate} is better but promoting failed: {exc}",
                file=sys.stderr,
            )
            return 1
        outcome = "promoted"
    elif args.shadow is not None and result.better:
        try:
            attach_shadow(result, fraction=args.shadow, url=args.url, token=args.token, timeout=args.timeout)
        except AdminError as exc:
            print(
                f"confidence recalibrate: attaching {result.candidate} as shadow failed: {exc}",
                file=sys.stderr,
            )
            return 1
        outcome = "better"
    if args.report or args.promote or args.shadow is not None:
        report_outcome(result.adapter, outcome, result.report, url=args.url, token=args.token)
    summary = {
        "current": result.current,
        "candidate": result.candidate,
        "outcome": outcome,
        "reason": result.reason if result.better or not args.promote else f"not promoted: {result.reason}",
        "heldout": result.report["heldout_comparison"],
    }
    print(json.dumps(summary, indent=2))
    return 0
