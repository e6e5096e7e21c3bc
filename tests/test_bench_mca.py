"""bench/mca_x86.py finds the loop llvm-mca must see: the hot path of the natural loop around each
marker, without scalar detours or cold blocks, and every loop its tables name."""
import platform
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import mca_x86  # noqa: E402

# a gcc-shaped loop entered at its test (.L2), a prefetch every fourth step, a scalar fallback
# laid out after the return
DEMO = """\
\t.type\tmca_demo_w64, @function
mca_demo_w64:
\tmovl\t$0, %eax
\tjmp\t.L2
.L3:
\t# LLVM-MCA-BEGIN demo
\tvmovups\t(%rdi,%rax,4), %zmm0
\ttestb\t$63, %al
\tjne\t.L4
\tprefetcht0\t(%rsi,%rax)
.L4:
\tvfmadd231ps\t%zmm0, %zmm1, %zmm2
\tcmpq\t%rcx, %rax
\tjg\t.L9
.L5:
\t# LLVM-MCA-END
\taddq\t$16, %rax
.L2:
\tcmpq\t%rdx, %rax
\tjl\t.L3
\tret
.L9:
\tmovss\t(%rdi), %xmm0
\taddss\t%xmm0, %xmm3
\tjmp\t.L5
\t.size\tmca_demo_w64, .-mca_demo_w64
"""


def mnemonics(body: str) -> list[str]:
    return [line.split()[0] for line in body.splitlines()]


def test_the_hot_path_skips_scalar_detours_and_cold_blocks():
    weights, body = mca_x86.regions(DEMO)["demo"]
    assert weights == 64
    assert mnemonics(body) == ["cmpq", "jl", "vmovups", "testb", "jne", "vfmadd231ps", "cmpq", "jg", "addq"]


def test_there_is_no_loop_around_the_outermost_one():
    lines = DEMO.splitlines()
    anchor = next(i for i, line in enumerate(lines) if "LLVM-MCA-BEGIN" in line)
    assert mca_x86.hot_path(lines, anchor, depth=0) is not None
    assert mca_x86.hot_path(lines, anchor, depth=1) is None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("gcc"),
                    reason="the AVX-512 harness compiles to nothing off x86-64")
def test_the_avx512_harness_marks_every_loop_its_table_names():
    isa = mca_x86.ISAS["avx512"]
    found = mca_x86.regions(mca_x86.compile_harness(isa, "gcc"))
    assert set(isa.measured.values()) <= set(found)
    for name, (weights, body) in found.items():
        assert weights in (64, 128, 256, 512), name
        assert "zmm" in body, name
