"""CPU facts that decide how the model runs."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16
    matmuls are emulated: measured on an AVX2-only CPU, a SmolLM2-135M forward ran ~3x
    slower in bf16 than in float32."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


# Up to this many usable CPUs, vLLM's default of reserving one core for its front end
# costs a large share of the machine (half of a 2-core host), so the worker gets them all.
SMALL_HOST_CPUS = 4


def thread_defaults(environ: Mapping[str, str], usable_cpus: Sequence[int]) -> dict[str, str]:
    """vLLM CPU thread settings to add to `environ` (never overriding what the user set).

    vLLM's "auto" binding reserves one core per worker for the scheduler and the API front
    end and binds the model's OpenMP threads to the rest. On a small host that leaves the
    model half the machine: measured on 2 cores, `/score` ran at 8.6 items/s with the
    defaults and 16.2 with the worker bound to both cores and none reserved. The front end
    then shares cores with the model's threads (see docs/benchmarks.md for what that costs
    small requests). Larger hosts keep vLLM's defaults.
    """
    if not usable_cpus or len(usable_cpus) > SMALL_HOST_CPUS:
        return {}
    if "VLLM_CPU_OMP_THREADS_BIND" in environ or "VLLM_CPU_NUM_OF_RESERVED_CPU" in environ:
        return {}  # the user chose a binding: keep the pair consistent by touching neither
    return {
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in sorted(usable_cpus)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
