"""cffi build script for the C kernels (API mode); run by setuptools at install time.

Every file of csrc/ is compiled on every platform: SIMD files guard their bodies by architecture
and enable their instruction sets per function (csrc/wp_target.h), so the build needs no -m flags
and the extension runs on any CPU of its architecture.

Environment variables read at build time:

- ``WEIGHTPACK_THREADING``: ``pool`` (default) - the kernels' own pthread pool (csrc/parallel.c);
  ``openmp`` - OpenMP, refused with a clear error if the compiler cannot build and link it;
  ``auto`` - OpenMP when a try-compile succeeds, else the pool.
- ``WEIGHTPACK_SANITIZE=address``: build with AddressSanitizer (run Python with
  ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; see README, Development).
"""
import os
import tempfile
from pathlib import Path

from cffi import FFI

_ROOT = Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "csrc"

_SANITIZE = os.environ.get("WEIGHTPACK_SANITIZE", "")
if _SANITIZE not in ("", "address"):
    raise RuntimeError(f"WEIGHTPACK_SANITIZE={_SANITIZE!r} is not supported; use 'address' or leave it unset")
_SANITIZER_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"] if _SANITIZE else []

_THREADING = os.environ.get("WEIGHTPACK_THREADING", "pool")
if _THREADING not in ("pool", "openmp", "auto"):
    raise RuntimeError(f"WEIGHTPACK_THREADING={_THREADING!r} is not supported; use 'pool', 'openmp' or 'auto'")

_OPENMP_PROBE = """
#include <omp.h>
int weightpack_openmp_probe(void) { int n = 0;
#pragma omp parallel reduction(+:n)
    n += omp_get_num_threads() > 0;
    return n; }
"""


def _compiler_builds_openmp() -> bool:
    """Whether the compiler setuptools will use compiles and links an OpenMP program."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsExecError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder, "probe.c")
        source.write_text(_OPENMP_PROBE)
        try:
            objects = compiler.compile([str(source)], output_dir=folder, extra_postargs=["-fopenmp"])
            compiler.link_shared_object(objects, str(Path(folder, "probe.so")), extra_postargs=["-fopenmp"])
        except (CCompilerError, DistutilsExecError, OSError):
            return False
    return True


def _threading_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) of the threading the build uses."""
    use_openmp = _THREADING == "openmp" or (_THREADING == "auto" and _compiler_builds_openmp())
    if _THREADING == "openmp" and not _compiler_builds_openmp():
        raise RuntimeError("WEIGHTPACK_THREADING=openmp, but the C compiler cannot build and link OpenMP code "
                           "(on macOS: brew install libomp, or build with the default thread pool)")
    if use_openmp:
        return ["-fopenmp", "-DWP_USE_OPENMP"], ["-fopenmp"]
    return ["-pthread"], ["-pthread"]


_COMPILE_THREADS, _LINK_THREADS = _threading_flags()

ffibuilder = FFI()
ffibuilder.cdef((_CSRC / "weightpack.h").read_text())
ffibuilder.set_source(
    "weightpack._wpc",
    '#include "weightpack.h"',
    sources=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.c"))],
    include_dirs=[str(_CSRC.relative_to(_ROOT))],
    extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    + _COMPILE_THREADS + _SANITIZER_FLAGS,
    extra_link_args=_LINK_THREADS + _SANITIZER_FLAGS,
    depends=[str(p.relative_to(_ROOT)) for p in sorted(_CSRC.glob("*.h"))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
