# setuptools reads everything else from pyproject.toml; cffi's build hook needs this one line.
from setuptools import setup

setup(cffi_modules=["weightpack/_cbuild.py:ffibuilder"])
