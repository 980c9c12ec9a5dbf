"""bfloat16 only where the CPU computes it, and only for the graphs it is asked for."""

from __future__ import annotations

import tensorflow as tf

from contracts.precision import bfloat16_rewrite, cpu_has_bfloat16, enable_bfloat16

REWRITE = "auto_mixed_precision_onednn_bfloat16"


def test_bfloat16_is_used_only_where_the_cpu_computes_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bfloat16(str(cpuinfo))  # oneDNN would emulate bfloat16 there: slower than float32
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bfloat16(str(cpuinfo))
    assert not cpu_has_bfloat16(str(tmp_path / "missing"))
    assert enable_bfloat16("float32") is False
    assert not tf.config.optimizer.get_experimental_options().get(REWRITE)


def test_the_training_block_turns_the_rewrite_off_after_it_even_on_an_error():
    with bfloat16_rewrite("float32") as on:
        assert on is False and not tf.config.optimizer.get_experimental_options().get(REWRITE)
    try:
        with bfloat16_rewrite("auto") as on:
            assert on == cpu_has_bfloat16()
            assert bool(tf.config.optimizer.get_experimental_options().get(REWRITE)) == on
            raise RuntimeError("a failed epoch")
    except RuntimeError:
        pass
    assert not tf.config.optimizer.get_experimental_options().get(REWRITE)
