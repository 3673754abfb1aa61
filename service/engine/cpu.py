"""CPU facts that decide how the model runs."""

from __future__ import annotations

import re
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
