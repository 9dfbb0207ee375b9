"""Build the native masking pass (gateway/_fastmask.c); metadata is in pyproject.toml.

It is a plain CPython extension with no dependencies beyond the C compiler and
Python headers, so `pip install -e .` (what `make` runs) builds it in place.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._fastmask",
            sources=["gateway/_fastmask.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
