"""cffi build script for the C kernels (API mode); run by setuptools at install time."""
from pathlib import Path

from cffi import FFI

_ROOT = Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "csrc"

ffibuilder = FFI()
ffibuilder.cdef((_CSRC / "weightpack.h").read_text())
ffibuilder.set_source(
    "weightpack._wpc",
    '#include "weightpack.h"',
    sources=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.c"))],
    include_dirs=[str(_CSRC.relative_to(_ROOT))],
    extra_compile_args=["-O3", "-std=c11", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wextra", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"],
    depends=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.h"))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
