"""Builds rnnjax's optional native extension ``rnnjax._native_ext`` (docs/implementation.md).

Everything else about the package is in pyproject.toml. The extension (rnnjax/_native/: the XLA FFI
handlers of the native recurrent layers) is compiled from source with the machine's C++ compiler
and the XLA FFI headers of jaxlib (``jax.ffi.include_dir()``, found without importing JAX). It is
optional: where it cannot be built (no compiler, no jaxlib headers, another OS) the install still
succeeds, says so in one line, and ``model.impl = "native"`` runs the pure-JAX fused layer.
"""

import importlib.util
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def jaxlib_include() -> str | None:
    """jaxlib's include directory (what ``jax.ffi.include_dir()`` returns), or None."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "include")
    return path if os.path.isfile(os.path.join(path, "xla", "ffi", "api", "ffi.h")) else None


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure into one line: the pure-JAX layers run instead."""

    def build_extension(self, ext):
        try:
            if sys.platform != "linux" or jaxlib_include() is None:
                raise RuntimeError(f"needs Linux and jaxlib's XLA FFI headers ({sys.platform})")
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 -- optional: never fail the install
            line = " ".join(f"{type(e).__name__}: {e}".split())[:160]
            print(
                f"rnnjax: the native extension was not built ({line}); model.impl = 'auto' (the "
                "default) and 'native' will run the pure-JAX fused layer",
                file=sys.stderr,
            )


setup(
    ext_modules=[
        Extension(
            "rnnjax._native_ext",
            sources=["rnnjax/_native/ffi.cc"],
            depends=["rnnjax/_native/kernels.h", "rnnjax/_native/gemm.h"],
            include_dirs=[p for p in [jaxlib_include()] if p],
            language="c++",
            extra_compile_args=[
                "-std=c++17",
                "-O3",
                "-march=native",
                "-fvisibility=hidden",
                "-pthread",
                "-w",
            ],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
