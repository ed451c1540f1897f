"""Builds the Cython kernel; all metadata lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("snapfs._fast", ["src/snapfs/_fast.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    ),
)
