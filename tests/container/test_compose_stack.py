"""The whole stack of docker-compose.yml, up for real, where no container registry is reachable.

`docker-compose up` runs the repository's docker-compose.yml with
deploy/offline/docker-compose.offline.yml, which swaps the public gateway, Prometheus and
PostgreSQL images for stand-ins built from Debian's packages on the debootstrapped base
(Grafana, which Debian does not package, is left out). Through the gateway, with an API key,
on the embedded model and the shipped adapter, the tests check in order, on one stack:
both replicas answer; labels land in PostgreSQL and are seen by either replica; Prometheus
scrapes both replicas and its recording rules agree with GET /calibration; the train profile
publishes a new adapter version that the admin API rolls out to both replicas; reads go on
through a replica's stop; `docker-compose down` keeps every acknowledged label.

Slow: builds five images (cached after the first run) and starts two vLLM replicas on CPU;
deploy/README.md has the measured times. Select with `-m compose`, leave out with `-m "not compose"`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.container.conftest import REPO, Container, build_image, docker
from tests.http_server import free_port

pytestmark = pytest.mark.compose

PROJECT = "confidence-compose-test"
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "deploy/offline/docker-compose.offline.yml")
# What `up` names; the replicas and PostgreSQL start as their dependencies. No Grafana offline.
UP_SERVICES = ("gateway", "prometheus")
REPLICAS = 2
# Services that run once and exit before the replicas start (they fill the shared volumes).
ONE_SHOT = ("volumes-init",)
ADAPTER = "smollm2-135m-uncertainty"
# What requests naming no method get: the shipped version has a calibrated head, the version
# the train profile exports has none.
METHOD = "calibrated_head"
TRAINED_METHOD = "adapter"
NEW_VERSION = "v1000-compose-test"
ADAPTER_ROOT = "/var/lib/confidence/adapters"
# The training job at its smallest: a few steps on a few records, enough to export a version.
TINY_TRAINING = (
    *("--max_steps", "2", "--per_device_train_batch_size", "2", "--warmup_steps", "0"),
    *("--eval_strategy", "no"),
)
TRAIN_SOURCE = REPO / "adapters/graded/smollm2-135m/train_mix.jsonl"
UP_TIMEOUT_S = 1800
GATEWAY_TIMEOUT_S = 330.0
# Questions with a checkable answer (for honest /feedback labels) and scored pairs that are
# right or wrong by construction.
QUESTIONS = (
    ("What is the capital of France?", "paris"),
    ("What is 2 + 2?", "4"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What is the largest planet in the solar system?", "jupiter"),
    ("What is the chemical symbol for gold?", "au"),
    ("How many days are there in a week?", "7"),
)
SCORED = (
    ("What is the capital of Italy?", "Rome", True),
    ("What is the capital of Italy?", "Madrid", False),
    ("What is 3 + 5?", "8", True),
    ("What colour is the sky on a clear day?", "Green", False),
)


@dataclass
class Stack:
    env: dict[str, str]
    api_key: str
    gateway_url: str
    prometheus_url: str
    logs: Path
    # (response id, item index) -> the label the service acknowledged storing.
    acknowledged: dict[tuple[str, int], bool] = field(default_factory=dict)
    served: list[tuple[str, int, bool]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        cmd = [compose_cli(), *files, "--project-name", PROJECT, *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker-compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def replicas(self) -> dict[str, str]:
        """Running replicas of the `confidence` service: IP address on the compose network -> container id."""
        running = {}
        for cid in self.containers("confidence"):
            inspected = json.loads(docker("inspect", cid).stdout)[0]
            if inspected["State"]["Running"]:
                (network,) = inspected["NetworkSettings"]["Networks"].values()
                running[network["IPAddress"]] = cid
        return running

    def psql(self, sql: str) -> list[list[str]]:
        out = self.compose(
            "exec", "-T", "postgres", "psql", "-U", "confidence", "-d", "confidence", "-At", "-c", sql
        )
        return [line.split("|") for line in out.stdout.splitlines() if line]

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.gateway_url, headers=headers, timeout=GATEWAY_TIMEOUT_S)

    def served_by(self, request_ids: Sequence[str]) -> dict[str, str]:
        """Which replica (container id) answered each request, from the gateway's JSON access log."""
        ips = self.replicas()
        (gateway,) = self.containers("gateway")
        answered: dict[str, str] = {}
        deadline = time.monotonic() + 30  # the log reaches `docker logs` a moment after the response
        while len(answered) < len(request_ids) and time.monotonic() < deadline:
            result = docker("logs", gateway)
            for line in (result.stdout + result.stderr).splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("request_id") in request_ids:
                    # "a:8000, b:8000" when nginx tried a second replica: the last one answered.
                    last = entry["upstream"].split(",")[-1].strip().rpartition(":")[0]
                    answered[entry["request_id"]] = ips.get(last, last)
            if len(answered) < len(request_ids):
                time.sleep(1)
        return answered


def compose_cli() -> str:
    found = shutil.which("docker-compose") or "/usr/bin/docker-compose"
    if not os.access(found, os.X_OK):
        pytest.fail("docker-compose is not installed: run scripts/setup (Debian's docker-compose)")
    return found


def tiny_training_data(directory: Path) -> None:
    """train.jsonl: a few graded records of each outcome from the shipped training data, in
    the train and calibration splits (the temperature is fitted on the latter)."""
    wanted = {(split, correct): 4 for split in ("train", "calibration") for correct in (True, False)}
    lines = []
    with TRAIN_SOURCE.open() as source:
        for line in source:
            record = json.loads(line)
            key = (record["split"], record["correct"])
            if wanted.get(key, 0) > 0:
                wanted[key] -= 1
                lines.append(line)
    assert not any(wanted.values()), f"{TRAIN_SOURCE} lacks records: {wanted}"
    directory.chmod(0o755)  # read by the train container's unprivileged user
    (directory / "train.jsonl").write_text("".join(lines))
    (directory / "train.jsonl").chmod(0o644)


def wait_healthy(stack: Stack, timeout_s: float) -> None:
    """Until every container of the stack is running and, where it has a health check, healthy."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for cid in stack.compose("ps", "-q").stdout.split():
            inspected = json.loads(docker("inspect", cid).stdout)[0]
            state = inspected["State"]
            name = inspected["Name"].lstrip("/")
            service = inspected["Config"]["Labels"].get("com.docker.compose.service")
            if service in ONE_SHOT and not state["Running"] and state["ExitCode"] == 0:
                continue  # it did its job; the replicas waited for it to succeed
            if not state["Running"]:
                log = docker("logs", cid, check=False)
                pytest.fail(f"{name} is not running ({state['Status']}):\n{log.stderr[-3000:]}")
            states[name] = state.get("Health", {}).get("Status", "running")
        if len(states) == REPLICAS + 3 and all(s in ("healthy", "running") for s in states.values()):
            return
        time.sleep(5)
    pytest.fail(f"the stack was not healthy within {timeout_s:.0f} s: {states}")


@pytest.fixture(scope="module")
def stack(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("compose")
    api_key = secrets.token_hex(16)
    keys = work / "api-keys.map"
    keys.write_text(f'"{api_key}" compose-test;\n')
    keys.chmod(0o644)  # read by the gateway's uid 101
    train_data = work / "train-data"
    train_data.mkdir()
    tiny_training_data(train_data)
    gateway_port, prometheus_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.update(
        BASE_IMAGE=base_image,
        GATEWAY_API_KEYS_FILE=str(keys),
        # Loopback only: nothing of the test stack is reachable from elsewhere.
        GATEWAY_PORT=f"127.0.0.1:{gateway_port}",
        PROMETHEUS_PORT=str(prometheus_port),
        POSTGRES_PASSWORD=secrets.token_hex(16),
        FEEDBACK_DB_PASSWORD=secrets.token_hex(16),
        GRAFANA_ADMIN_PASSWORD=secrets.token_hex(16),
        CONFIDENCE_ADMIN_TOKEN=secrets.token_hex(16),
        TRAIN_DATA_DIR=str(train_data),
        ADAPTER_NAME=ADAPTER,
        ADAPTER_VERSION=NEW_VERSION,
    )
    stack = Stack(
        env=env,
        api_key=api_key,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        logs=work / "compose.log",
    )
    stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans")  # a crashed run's leftovers
    # Every image the compose files build, as they define it (context, target, arguments).
    config = yaml.safe_load(stack.compose("--profile", "train", "config").stdout)
    started = time.monotonic()
    for name in ("confidence", "train", "gateway", "prometheus", "postgres"):
        service = config["services"][name]
        build = service["build"]
        dockerfile = Path(build["context"]) / build["dockerfile"] if "dockerfile" in build else None
        build_image(
            Path(build["context"]),
            target=build["target"],
            tag=service["image"],
            build_args=build.get("args", {}),
            dockerfile=dockerfile,
            log=work / f"build-{name}.log",
        )
    print(f"images built in {time.monotonic() - started:.0f} s")
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build", "--scale", f"confidence={REPLICAS}", *UP_SERVICES)
        wait_healthy(stack, UP_TIMEOUT_S)
        print(
            f"stack up in {time.monotonic() - started:.0f} s: `docker-compose up` to every container healthy"
        )
        yield stack
    finally:
        stack.logs.write_text(stack.compose("--profile", "train", "logs", "--no-color", check=False).stdout)
        print(f"compose logs: {stack.logs}")
        stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans", check=False)


def ask(
    client: httpx.Client, path: str, body: dict[str, Any], request_id: str, method: str
) -> dict[str, Any]:
    response = client.post(path, json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, (path, response.status_code, response.text)
    result: dict[str, Any] = response.json()
    assert result["method"] == method and result["adapter"]["name"] == ADAPTER, result
    return result


def serve_round(stack: Stack, tag: str, method: str = METHOD) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One /generate per question, then as many /score of the pairs, through the gateway (each
    endpoint in a run of its own: alternating them would pair each with one replica under
    round robin). Returns the responses and the replica that answered each request id."""
    responses, request_ids = [], []
    with stack.client() as client:
        for i, (question, expected) in enumerate(QUESTIONS):
            request_ids.append(f"{tag}-generate-{i}")
            generated = ask(
                client, "/generate", {"prompt": question, "max_tokens": 16}, request_ids[-1], method
            )
            assert 0.0 <= generated["confidence"] <= 1.0, generated
            stack.served.append((generated["id"], 0, expected in generated["text"].lower()))
            responses.append(generated)
        items = [{"question": q, "answer": a} for q, a, _ in SCORED]
        for i in range(len(QUESTIONS)):
            request_ids.append(f"{tag}-score-{i}")
            scored = ask(client, "/score", {"items": items}, request_ids[-1], method)
            assert [item["index"] for item in scored["items"]] == list(range(len(SCORED))), scored
            assert all(0.0 <= item["confidence"] <= 1.0 for item in scored["items"]), scored
            stack.served += [(scored["id"], j, ok) for j, (_, _, ok) in enumerate(SCORED)]
            responses.append(scored)
    return responses, stack.served_by(request_ids)


def test_generate_and_score_answer_from_both_replicas(stack: Stack) -> None:
    replicas = set(stack.replicas().values())
    assert len(replicas) == REPLICAS
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as anonymous:
        assert anonymous.post("/generate", json={"prompt": "hi"}).status_code == 401
    responses, served_by = serve_round(stack, "shipped")
    generate_ids = [k for k in served_by if "-generate-" in k]
    score_ids = [k for k in served_by if "-score-" in k]
    assert len(generate_ids) == len(score_ids) == len(QUESTIONS), served_by
    assert {served_by[k] for k in generate_ids} == replicas, served_by
    assert {served_by[k] for k in score_ids} == replicas, served_by
    assert len({r["adapter"]["version"] for r in responses}) == 1, "one default version everywhere"


def test_openai_chat_through_the_gateway_answers_with_confidence(stack: Stack) -> None:
    """The OpenAI-compatible chat route, through the gateway with an API key: the choice carries
    its confidence from the shipped adapter (issue 16)."""
    with stack.client() as client:
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        base = models.json()["data"][0]["id"]
        question = {"role": "user", "content": QUESTIONS[0][0]}
        body = {"model": base, "messages": [question], "max_tokens": 16}
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    confidence = choice["confidence"]
    assert 0.0 <= confidence["value"] <= 1.0, choice
    assert confidence["adapter"].startswith(f"{ADAPTER}@"), choice


def shipped_version(stack: Stack) -> str:
    with stack.client() as client:
        listing = client.get("/adapters").json()
    name, _, version = listing["default"].partition("@")
    assert name == ADAPTER, listing
    return version


def replica_json(cid: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A request to the replica itself, from inside its container (the private side)."""
    status, result = Container(cid).request(path, body)
    assert status == 200, (cid, path, status, result)
    return result


def labelled_rows(stack: Stack) -> dict[tuple[str, int], bool]:
    rows = stack.psql(
        "SELECT response_id, item_index, correct FROM confidence_outcomes WHERE correct IS NOT NULL"
    )
    return {(rid, int(index)): correct == "t" for rid, index, correct in rows}


def test_feedback_lands_in_postgres_and_either_replica_sees_it(stack: Stack) -> None:
    assert stack.served, "needs the responses of the previous test"
    ids = sorted({rid for rid, _, _ in stack.served})
    in_list = ",".join(f"'{rid}'" for rid in ids)
    # The service records a served response after answering; wait until all are stored.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = stack.psql(
            f"SELECT count(DISTINCT response_id) FROM confidence_outcomes WHERE response_id IN ({in_list})"
        )
        if int(stored[0][0]) == len(ids):
            break
        time.sleep(1)
    # One batch, so one replica counts every label in its metrics (see the Prometheus test).
    items = [{"id": rid, "index": index, "correct": ok} for rid, index, ok in stack.served]
    with stack.client() as client:
        response = client.post("/feedback", json={"items": items})
    assert response.status_code == 200, response.text
    assert response.json() == {"recorded": len(items), "duplicates": 0}
    stack.acknowledged.update({(rid, index): ok for rid, index, ok in stack.served})
    assert labelled_rows(stack) == stack.acknowledged

    version = shipped_version(stack)
    reports = [
        replica_json(cid, f"/calibration?adapter={ADAPTER}&version={version}&window=1h")
        for cid in stack.replicas().values()
    ]
    assert len(reports) == REPLICAS
    assert reports[0]["n"] == len(items) and reports[0]["n_correct"] == sum(ok for _, _, ok in stack.served)
    assert reports[0]["ece"] is not None and reports[0]["brier"] is not None, reports[0]
    assert all(report == reports[0] for report in reports), reports
    stack.calibration = reports[0]


def prometheus(stack: Stack, path: str, **params: str) -> Any:
    response = httpx.get(f"{stack.prometheus_url}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def scraped_replicas(stack: Stack) -> set[str]:
    """Addresses of the replicas Prometheus discovered and last scraped successfully."""
    targets = prometheus(stack, "/api/v1/targets", state="active")["activeTargets"]
    return {
        t["labels"]["instance"] for t in targets if t["labels"]["job"] == "confidence" and t["health"] == "up"
    }


def query_value(stack: Stack, expr: str) -> tuple[float, float] | None:
    """(evaluation time, value) of a one-series instant query, None when it has no result."""
    result = prometheus(stack, "/api/v1/query", query=expr)["result"]
    assert len(result) <= 1, result
    return (float(result[0]["value"][0]), float(result[0]["value"][1])) if result else None


def rule_group_evaluated_at(stack: Stack, group: str) -> float:
    (found,) = [g for g in prometheus(stack, "/api/v1/rules", type="record")["groups"] if g["name"] == group]
    stamp = found["lastEvaluation"]  # RFC 3339 with nanoseconds
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def test_prometheus_scrapes_both_replicas_and_its_rules_equal_calibration(stack: Stack) -> None:
    assert stack.calibration, "needs the labels of the previous test"
    expected = {f"{ip}:8000" for ip in stack.replicas()}
    deadline = time.monotonic() + 120  # DNS refresh (30 s) + a scrape (15 s), with room
    while scraped_replicas(stack) != expected and time.monotonic() < deadline:
        time.sleep(5)
    assert scraped_replicas(stack) == expected

    version = stack.calibration["version"]
    selector = f'{{adapter="{ADAPTER}",version="{version}",method="{METHOD}"}}'
    # The raw counters first: a scrape has seen every label ...
    deadline = time.monotonic() + 120
    seen = None
    while time.monotonic() < deadline:
        seen = query_value(stack, f"sum(confidence_feedback_total{selector})")
        if seen is not None and seen[1] == stack.calibration["n"]:
            break
        time.sleep(5)
    assert seen is not None and seen[1] == stack.calibration["n"], seen
    # ... then the rules evaluated after it (every minute).
    while (
        rule_group_evaluated_at(stack, "confidence-calibration-1h") <= seen[0]
        and time.monotonic() < deadline + 90
    ):
        time.sleep(5)
    ece = query_value(stack, f"adapter_version_method:confidence_ece:1h{selector}")
    brier = query_value(stack, f"adapter_version_method:confidence_brier:1h{selector}")
    assert ece is not None and brier is not None, (ece, brier)
    # Exact up to rounding: increase() scales a series by how far its samples fall short of the
    # window's ends, the same factor for every series of one replica, and all the labels were
    # counted by one replica (one /feedback batch), so the factor cancels in each ratio.
    assert ece[1] == pytest.approx(stack.calibration["ece"], rel=1e-9, abs=1e-12)
    assert brier[1] == pytest.approx(stack.calibration["brier"], rel=1e-9, abs=1e-12)


def train_command(stack: Stack) -> list[str]:
    """The train profile's command as docker-compose.yml has it, with the tiny configuration."""
    config = yaml.safe_load(stack.compose("--profile", "train", "config").stdout)
    command: list[str] = config["services"]["train"]["command"]
    return [*command, *TINY_TRAINING]


def post_honouring_retry_after(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST as a well-behaved client does: after a 429 wait the Retry-After the gateway names."""
    for _ in range(5):
        response = client.post(path, json=body)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers["Retry-After"]))
    return response


def test_train_profile_publishes_a_version_the_admin_api_rolls_out(stack: Stack) -> None:
    started = time.monotonic()
    run = stack.compose(
        "--profile", "train", "run", "--rm", "train", *train_command(stack), timeout=3600, check=False
    )
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-6000:])
    print(f"train profile ran in {time.monotonic() - started:.0f} s")
    replicas = stack.replicas()
    for cid in replicas.values():
        # The replicas see the new version in the shared volume they mount read-only ...
        docker("exec", cid, "test", "-f", f"{ADAPTER_ROOT}/{ADAPTER}/{NEW_VERSION}/manifest.json")
        # ... and load it through the admin API (CONFIDENCE_ADMIN_TOKEN set for the stack).
        docker("exec", cid, "confidence", "adapters", "load", ADAPTER, NEW_VERSION, "--default", timeout=600)
        assert replica_json(cid, "/adapters")["default"] == f"{ADAPTER}@{NEW_VERSION}"
    responses, served_by = serve_round(stack, "trained", TRAINED_METHOD)
    assert {r["adapter"]["version"] for r in responses} == {NEW_VERSION}
    assert set(served_by.values()) == set(replicas.values()), served_by
    # Labels for the new version, one request per response (so both replicas store some).
    labels: dict[str, list[dict[str, Any]]] = {}
    for rid, index, ok in stack.served:
        if (rid, index) not in stack.acknowledged:
            labels.setdefault(rid, []).append({"id": rid, "index": index, "correct": ok})
    with stack.client() as client:
        for items in labels.values():
            response = post_honouring_retry_after(client, "/feedback", {"items": items})
            assert response.status_code == 200, response.text
            assert response.json() == {"recorded": len(items), "duplicates": 0}
            stack.acknowledged.update({(item["id"], item["index"]): item["correct"] for item in items})
    assert labelled_rows(stack) == stack.acknowledged


def test_reads_through_the_gateway_survive_stopping_a_replica(stack: Stack) -> None:
    replicas = list(stack.replicas().values())
    assert len(replicas) == REPLICAS
    outcomes: list[tuple[float, int | str]] = []
    done = threading.Event()

    def read() -> None:
        with stack.client() as client:
            paths = ("/adapters", f"/calibration?adapter={ADAPTER}&window=1h")
            while not done.is_set():
                try:
                    status: int | str = client.get(paths[len(outcomes) % 2]).status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                outcomes.append((time.monotonic(), status))
                done.wait(0.25)  # well under the gateway's 10 requests/s per key

    reader = threading.Thread(target=read)
    reader.start()
    try:
        while len(outcomes) < 5:
            time.sleep(0.2)
        docker("stop", "--time", "45", replicas[-1], timeout=120)
        stopped = time.monotonic()
        # Long enough for the gateway to try the stopped replica again after its fail_timeout (10 s).
        while time.monotonic() < stopped + 25:
            time.sleep(1)
    finally:
        done.set()
        reader.join(timeout=GATEWAY_TIMEOUT_S)
    after = [status for at, status in outcomes if at > stopped]
    failed = [status for _, status in outcomes if status != 200]
    print(f"{len(outcomes)} reads, {len(after)} after the stop, {len(failed)} failed")
    assert failed == []
    assert len(after) >= 10
    assert list(stack.replicas().values()) == replicas[:-1]


def test_down_keeps_every_acknowledged_label(stack: Stack) -> None:
    assert stack.acknowledged, "needs the labels of the previous tests"
    stack.compose("down", timeout=300)
    assert stack.compose("ps", "-q").stdout.split() == []
    docker("volume", "inspect", f"{PROJECT}_feedback-db")
    stack.compose("up", "-d", "--no-build", "postgres")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        check = stack.compose(
            "exec", "-T", "postgres", "pg_isready", "-U", "confidence", "-d", "confidence", check=False
        )
        if check.returncode == 0:
            break
        time.sleep(2)
    assert labelled_rows(stack) == stack.acknowledged
