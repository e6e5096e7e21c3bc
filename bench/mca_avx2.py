"""Predicted cycles per 64 weights of the AVX2 hot loops (llvm-mca): bench/mca_x86.py --isa avx2.

    python bench/mca_avx2.py [--cpus haswell znver3] [--only product] [--show NAME] [--measure]
"""
import sys

from mca_x86 import main

if __name__ == "__main__":
    sys.exit(main(["--isa", "avx2", *sys.argv[1:]]))
