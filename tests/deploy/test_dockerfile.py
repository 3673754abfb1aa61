"""The Dockerfile: lint clean, and built the way the deployment needs (what a linter
cannot know: offline CPU image, non-root, health check on /ready, tini, no secrets)."""

from __future__ import annotations

import re

from tests.deploy.conftest import REPO, checkov, run, tool

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """target name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            out[current] = []
        if current:
            out[current].append(line)
    return out


def test_hadolint_passes() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_dockerfile_policies_pass() -> None:
    result = checkov(DOCKERFILE, "dockerfile")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_targets_and_runtime_contract() -> None:
    targets = stages()
    assert {"cpu", "gpu", "train"} <= targets.keys()
    for name in ("cpu", "gpu"):
        lines = targets[name]
        users = [line for line in lines if line.startswith("USER ")]
        assert users and users[-1] == "USER 10001:10001", f"{name} must end as the unprivileged user"
        assert any(line.startswith("HEALTHCHECK") and "/ready" in line for line in lines), name
        assert 'ENTRYPOINT ["tini", "--"]' in lines, name
        assert 'CMD ["confidence", "serve"]' in lines, name

    # The gpu image cannot share the cpu one's base: it repeats its runtime settings, exactly.
    def env(lines: list[str]) -> list[str]:
        return [line for line in lines if line.startswith("ENV CONFIDENCE_HOST")]

    assert env(targets["gpu"]) == env(targets["runtime-base"]) != []
    # The train target is the cpu image plus packages, back to the unprivileged user.
    assert targets["train"][0].startswith("FROM cpu AS train")
    assert [line for line in targets["train"] if line.startswith("USER ")][-1] == "USER 10001:10001"


def test_cpu_image_bakes_model_and_adapter_and_runs_offline() -> None:
    targets = stages()
    assert "requirements-cpu.txt" in " ".join(targets["cpu-deps"])
    assert "ensure_default_model" in " ".join(targets["cpu-model"])
    cpu = targets["cpu"]
    assert "COPY --from=cpu-build /opt/confidence/venv /opt/confidence/venv" in cpu
    assert "COPY --from=cpu-model /opt/confidence/models /opt/confidence/models" in cpu
    assert any("adapters/exported /var/lib/confidence/adapters" in line for line in cpu)
    runtime = " ".join(stages()["runtime-base"])
    assert "HF_HUB_OFFLINE=1" in runtime


def test_no_secret_reaches_a_layer() -> None:
    text = DOCKERFILE.read_text()
    # Credentials only ever come in as BuildKit secrets, mounted for one RUN.
    assert not re.search(
        r"^\s*(ARG|ENV)\s+\S*(PASSWORD|TOKEN|SECRET|PIP_CERT)", text, re.IGNORECASE | re.MULTILINE
    )
    assert "--mount=type=secret,id=pip_ca" in text
    assert not re.search(r"^\s*(COPY|ADD)\s.*(\.pem|\.crt|\.key|api-keys)", text, re.MULTILINE)


def test_build_context_leaves_the_checkout_out() -> None:
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    # Everything is out first; only the sources the images are built from come back in.
    assert rules[0] == "*"
    assert {"!service/", "!adapters/", "!deploy/docker/", "!pyproject.toml"} <= set(rules)
    assert not any(rule.startswith("!") and (".venv" in rule or "tests" in rule) for rule in rules)
