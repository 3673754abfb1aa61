"""What every benchmark shares: arguments, the real service in-process, timing, tables, results.

Each script runs against the real vLLM engine (CPU or CUDA build, whichever is installed)
and writes `bench/results/<name>.json` with the machine, the versions and its numbers,
so a figure in docs/benchmarks.md can always be traced to the run that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.lora.files import newest_version_dir

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

# What the service serves by default: the newest shipped version.
_NEWEST = newest_version_dir(REPO / "adapters" / "exported" / "smollm2-135m-uncertainty")
assert _NEWEST is not None, "no shipped adapter under adapters/exported/smollm2-135m-uncertainty"
DEFAULT_ADAPTER = _NEWEST
GRADED = REPO / "adapters" / "graded" / "smollm2-135m" / "train_mix.jsonl"

# Questions for the latency benchmarks: short, varied, answerable by a small model.
QUESTIONS = [
    "What is the capital of France?",
    "What is 7 times 8?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Name the largest planet in the solar system.",
    "What gas do plants absorb from the air?",
    "How many legs does a spider have?",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "Who painted the Mona Lisa?",
    "What is the chemical symbol for gold?",
    "How many days are in a leap year?",
    "What is the freezing point of water in Fahrenheit?",
    "Which continent is Kenya in?",
    "What is 15 plus 27?",
]


def parser(description: str | None) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: which model and adapter, and --quick."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: a few requests, minimal sizes")
    p.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2-135M)")
    p.add_argument(
        "--adapter", type=Path, default=DEFAULT_ADAPTER, help="adapter directory <root>/<name>/<version>"
    )
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument(
        "--kv-cache-gib", type=float, default=None, help="default: 1 on CPU, memory fraction on GPU"
    )
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: bench/results/<name>.json)")
    return p


@dataclass(frozen=True)
class Script:
    """A benchmark's command line: the common arguments plus its `options`; `--quick`
    applies its `quick` sizes; `main` measures with its own engine, prints, writes JSON."""

    name: str
    doc: str | None
    options: Callable[[argparse.ArgumentParser], None]
    quick: dict[str, Any]
    measure: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]
    report: Callable[[dict[str, Any]], None]

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        p = parser(self.doc)
        self.options(p)
        args = p.parse_args(argv)
        if args.quick:
            vars(args).update(self.quick)
        return args

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parse(argv)
        publish(self.name, args, asyncio.run(self.measure(args)), self.report)
        return 0


def settings_for(args: argparse.Namespace, **overrides: Any) -> Any:
    """Service settings serving `args.adapter` as the default adapter, from its own root."""
    from service.settings import Settings

    fields: dict[str, Any] = {
        # Served responses are recorded in the outcome store: a benchmark's go to a scratch
        # database, never the user's (unless CONFIDENCE_FEEDBACK_DB_* says where).
        "feedback_db_path": Path(tempfile.mkdtemp(prefix="bench-feedback-")) / "feedback.sqlite3",
        "model": args.model,
        "adapter_root": args.adapter.parent.parent,
        "default_adapter": args.adapter.parent.name,
        "max_model_len": args.max_model_len,
        "kv_cache_gib": args.kv_cache_gib,
        "log_level": "warning",
    }
    if "CONFIDENCE_FEEDBACK_DB_PATH" in os.environ or "CONFIDENCE_FEEDBACK_DB_URL" in os.environ:
        del fields["feedback_db_path"]
    return Settings.model_validate({**fields, **overrides})


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU (if any), and the versions that decide the numbers."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": gpu,
        "device": "cuda" if gpu else "cpu",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {"vllm": vllm_version, "torch": torch.__version__, "python": sys.version.split()[0]},
    }


def write_result(name: str, args: argparse.Namespace, data: dict[str, Any]) -> Path:
    out: Path = args.out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command(name),
        "quick": args.quick,
        "model": args.model or "embedded SmolLM2-135M-Instruct",
        "adapter": str(args.adapter),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return out


def command(name: str) -> str:
    """How this result was produced, as a command to paste (or that it ran inside a test)."""
    if Path(sys.argv[0]).stem != name:
        return f"python -m bench.{name} (called in-process by {Path(sys.argv[0]).name})"
    return " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]])


def publish(
    name: str, args: argparse.Namespace, result: dict[str, Any], report: Callable[[dict[str, Any]], None]
) -> Path:
    """Print the result's table and write its JSON."""
    report(result)
    return write_result(name, args, result)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table (rich if available, else plain text)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}")
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        return
    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for r in cells:
        out.add_row(*r)
    Console().print(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


@dataclass
class Timing:
    """Latencies (seconds) of the requests of one run and its wall time."""

    latencies: list[float]
    wall_s: float

    @classmethod
    def merged(cls, timings: Sequence[Timing]) -> Timing:
        """Several runs of one arm as one."""
        return cls([x for t in timings for x in t.latencies], sum(t.wall_s for t in timings))

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            "requests": len(lat),
            "mean_s": statistics.fmean(lat),
            "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99),
            "throughput_rps": len(lat) / self.wall_s,
            "wall_s": self.wall_s,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 values is the 99th)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


async def closed_loop(
    call: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    requests: int | None = None,
    seconds: float | None = None,
) -> Timing:
    """`concurrency` clients, each sending its next request as soon as the last returns,
    until `requests` have been sent and/or `seconds` have passed; request i gets argument i."""
    latencies: list[float] = []
    counter = iter(range(requests if requests is not None else sys.maxsize))
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def client() -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Timing(latencies, time.perf_counter() - started)


@asynccontextmanager
async def in_process_service(settings: Any, engine: Any = None) -> AsyncIterator[tuple[Any, Any]]:
    """(ConfidenceService, AdapterOps): the real service stack (registry, warm-up) without HTTP.

    With `engine=None` a VLLMEngine is built from `settings` and shut down afterwards; a
    given (already started) engine is shared and left running, as the smoke test does.
    """
    from service.serving.lifecycle import start_service

    owned = engine is None
    engine, service, ops = await start_service(settings, engine)
    try:
        yield service, ops
    finally:
        service.registry.close()
        if owned:
            engine.shutdown()


@asynccontextmanager
async def http_server(
    settings: Any, engine: Any = None, *, ready_timeout_s: float = 900
) -> AsyncIterator[str]:
    """The real app under uvicorn on a free loopback port, in this event loop; yields its URL.

    Serving from the benchmark's own loop (not a thread) lets a shared engine be served:
    vLLM's client belongs to the loop that started it.
    """
    from service.app import build_app

    async with serve_app(build_app(settings, engine=engine), engine, ready_timeout_s=ready_timeout_s) as url:
        yield url


@asynccontextmanager
async def serve_app(app: Any, engine: Any = None, *, ready_timeout_s: float = 900) -> AsyncIterator[str]:
    """Serve `app` (built around `engine`, if given) until the block ends; yields its URL once ready."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    original_shutdown = engine.shutdown if engine is not None else None
    if engine is not None:
        # The app shuts down the engine it serves when it stops; a shared one must outlive it.
        engine.shutdown = lambda: None
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"

    def check_alive() -> None:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped during start-up")

    try:
        await wait_ready(f"{url}/ready", check_alive, timeout_s=ready_timeout_s)
        yield url
    finally:
        server.should_exit = True
        await task
        if engine is not None:
            engine.shutdown = original_shutdown


async def wait_ready(url: str, check_alive: Callable[[], None], *, timeout_s: float) -> None:
    """Poll `url` until it answers 200; `check_alive` raises if the server has died."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            check_alive()
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s} s")
            await asyncio.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def model_dir_for(args: argparse.Namespace) -> str:
    """The model directory a benchmark's engine loads (the embedded default if none given)."""
    from service.serving.lifecycle import resolve_model

    return str(args.model or resolve_model(settings_for(args)))


def weight_shapes(model_dir: str) -> Iterator[tuple[str, list[int]]]:
    """(name, shape) of every tensor in the model's safetensors files, without loading them."""
    from safetensors import safe_open

    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, list(weights.get_slice(name).get_shape())


def non_embedding_parameters(model_dir: str) -> int:
    """Parameters a token's forward pass multiplies through: all but the embedding table and
    the output head (a prefill computes logits for its last position only)."""
    return sum(
        math.prod(shape)
        for name, shape in weight_shapes(model_dir)
        if "embed_tokens" not in name and "lm_head" not in name
    )


def achieved(tokens_per_s: float, parameters: int, peak_flops: float) -> dict[str, float]:
    """Achieved FLOP/s (2 per parameter per token) and its fraction of the measured peak."""
    flops = tokens_per_s * 2 * parameters
    return {"tokens_per_s": tokens_per_s, "flops": flops, "fraction_of_peak": flops / peak_flops}


class QuestionPool:
    """Distinct open questions (TriviaQA and NQ-Open, from the graded file), each handed out
    once: no request finds another's prompt in vLLM's prefix cache, as in real traffic
    (repeating a few questions would let the confidence read reuse an earlier request's
    blocks and flatter it)."""

    SOURCES = ("triviaqa", "nq_open")

    def __init__(self) -> None:
        from adapters.data import read_graded_jsonl

        self._questions = sorted(
            {r.question for r in read_graded_jsonl(GRADED) if r.source in self.SOURCES},
            key=lambda q: hash_order(q),
        )
        self._next = 0

    def take(self, n: int) -> list[str]:
        if self._next + n > len(self._questions):
            raise RuntimeError(f"the benchmark needs more than {len(self._questions)} distinct questions")
        taken = self._questions[self._next : self._next + n]
        self._next += n
        return taken


def hash_order(text: str) -> str:
    """A fixed pseudo-random order (Python's own hash is salted per process)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
