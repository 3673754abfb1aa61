"""The default method on the real vLLM engine (tiny model, real HTTP on loopback): a version
with a head serves `calibrated_head` to a request naming no method, streamed and unstreamed
alike, and a shadow candidate with a head reads with its head in the same engine batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.app import build_app
from service.calibration.estimator import HeadParams
from service.lora.manifest import AdapterManifest
from tests.http_server import serve_in_thread
from tests.integration.conftest import make_random_lora, tiny_settings, write_manifest
from tests.monitoring_helpers import stored_shadow_reads
from tests.unit.test_calibrated_head import HEAD

pytestmark = pytest.mark.integration

TOKEN = "default-method-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEMS = [{"question": "Is 3 prime?", "answer": "True"}, {"question": "Is 4 prime?", "answer": "True"}]


def with_head(adapter_dir: Path, **fields: object) -> None:
    manifest = AdapterManifest.read(adapter_dir)
    manifest.model_copy(update={"head": HeadParams(**HEAD), **fields}).write(adapter_dir)


@pytest.fixture(scope="module")
def root(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("default-method") / "adapters"
    v1 = make_random_lora(tiny_model, root / "unc" / "v1", seed=11, scale=2.0)
    write_manifest(v1, tiny_model, "unc", "v1", temperature=1.5)
    with_head(v1)
    # v2: the same LoRA under another temperature, also with a head; start-up serves it (newest).
    v2 = shutil.copytree(v1, root / "unc" / "v2")
    with_head(v2, version="v2", temperature=3.0)
    return root


def test_default_method_streamed_and_shadowed_on_the_real_engine(tiny_model, root, monkeypatch):
    settings = tiny_settings(tiny_model, root, default_adapter="unc", admin_token=TOKEN)
    monkeypatch.setenv("CONFIDENCE_FEEDBACK_DB_PATH", str(settings.feedback_db_path))
    with (
        serve_in_thread(build_app(settings), ready_timeout=600) as url,
        httpx.Client(base_url=url, timeout=300) as c,
    ):
        body = {"prompt": "Is 3 prime?", "max_tokens": 8}
        plain = c.post("/generate", json=body).json()
        assert (plain["method"], plain["adapter"]["version"]) == ("calibrated_head", "v2")
        streamed = c.post("/generate", json={**body, "stream": True}).text
        frames = [line.removeprefix("data: ") for line in streamed.split("\n\n") if line.strip()]
        final = json.loads(frames[-2])
        assert final["text"] == plain["text"] and final["method"] == "calibrated_head"
        # Both read the head from the sampled tokens' log-probs of the same answer.
        assert final["confidence"] == pytest.approx(plain["confidence"], abs=1e-6)

        loaded = c.post("/admin/adapters", json={"name": "unc", "version": "v1"}, headers=AUTH)
        assert loaded.status_code == 201, loaded.text
        attached = c.put("/admin/shadow", json={"adapter": "unc@v1", "fraction": 1.0}, headers=AUTH)
        assert attached.status_code == 200, attached.text
        served = c.post("/score", json={"items": ITEMS}).json()
        assert (served["method"], served["adapter"]["version"]) == ("calibrated_head", "v2")
        rows = stored_shadow_reads(settings.feedback_db_path, len(ITEMS), timeout=30)
        assert {(version, method) for version, method, _ in rows} == {("v1", "calibrated_head")}
        own = c.post("/score", json={"items": ITEMS, "adapter": "unc@v1", "method": "calibrated_head"}).json()
        assert [conf for _, _, conf in rows] == pytest.approx(
            [item["confidence"] for item in own["items"]], abs=1e-4
        )
