"""cffi build script for the C kernels (API mode); run by setuptools at install time.

``WEIGHTPACK_SANITIZE=address pip install -e .`` builds the extension with AddressSanitizer (run
Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; see README, Development).
"""
import os
from pathlib import Path

from cffi import FFI

_ROOT = Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "csrc"

_SANITIZE = os.environ.get("WEIGHTPACK_SANITIZE", "")
if _SANITIZE not in ("", "address"):
    raise RuntimeError(f"WEIGHTPACK_SANITIZE={_SANITIZE!r} is not supported; use 'address' or leave it unset")
_SANITIZER_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"] if _SANITIZE else []

ffibuilder = FFI()
ffibuilder.cdef((_CSRC / "weightpack.h").read_text())
ffibuilder.set_source(
    "weightpack._wpc",
    '#include "weightpack.h"',
    sources=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.c"))],
    include_dirs=[str(_CSRC.relative_to(_ROOT))],
    extra_compile_args=["-O3", "-std=c11", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    + _SANITIZER_FLAGS,
    extra_link_args=["-fopenmp"] + _SANITIZER_FLAGS,
    depends=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.h"))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
