import pytest

from service.engine.cpu import SMALL_HOST_CPUS, cpu_has_native_bf16, thread_defaults


def test_native_bf16_is_read_from_cpu_flags(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t: fpu avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("flags\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16(avx2)
    assert cpu_has_native_bf16(amx)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_small_host_binds_the_worker_to_every_usable_cpu() -> None:
    assert thread_defaults({}, [0, 1]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "0,1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def test_large_host_keeps_vllm_defaults() -> None:
    assert thread_defaults({}, list(range(SMALL_HOST_CPUS + 1))) == {}


@pytest.mark.parametrize("variable", ["VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"])
def test_a_binding_the_user_set_is_never_overridden(variable: str) -> None:
    assert thread_defaults({variable: "1"}, [0, 1]) == {}
