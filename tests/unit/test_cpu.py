from service.engine.cpu import cpu_has_native_bf16


def test_native_bf16_is_read_from_cpu_flags(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t: fpu avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("flags\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16(avx2)
    assert cpu_has_native_bf16(amx)
    assert not cpu_has_native_bf16(tmp_path / "missing")
