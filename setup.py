"""Builds rnnjax's optional native extension ``rnnjax._native_ext`` (docs/implementation.md).

Everything else about the package is in pyproject.toml. The extension (rnnjax/_native/: the XLA FFI
handlers of the native recurrent layers) is compiled from source with the machine's C++ compiler
and the XLA FFI headers of jaxlib (``jax.ffi.include_dir()``, found without importing JAX). It is
optional: where it cannot be built (no compiler, no jaxlib headers, another OS) the install still
succeeds, says so in one line, and ``model.impl = "native"`` runs the pure-JAX fused layer.
"""

import importlib.util
import os
import platform
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

    said = False  # one line for the whole build, however many of the extensions failed

    def build_extension(self, ext):
        try:
            if sys.platform != "linux" or jaxlib_include() is None:
                raise RuntimeError(f"needs Linux and jaxlib's XLA FFI headers ({sys.platform})")
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 -- optional: never fail the install
            if OptionalBuildExt.said:
                return
            OptionalBuildExt.said = True
            line = " ".join(f"{type(e).__name__}: {e}".split())[:160]
            if ext.name.endswith("_avx2"):  # the host's build is there: only the AVX2 one is not
                print(
                    f"rnnjax: the AVX2 build of the native extension was not built ({line}); "
                    "RNNJAX_NATIVE_ISA=avx2 is unavailable, the host's build runs",
                    file=sys.stderr,
                )
                return
            print(
                f"rnnjax: the native extension was not built ({line}); model.impl = 'auto' (the "
                "default) and 'native' will run the pure-JAX fused layer",
                file=sys.stderr,
            )


def native_extension(module: str, march: str, defines: list[str]) -> Extension:
    """One build of rnnjax/_native/ as the module ``rnnjax.<module>``, for ``-march=<march>``."""
    return Extension(
        f"rnnjax.{module}",
        sources=["rnnjax/_native/ffi.cc"],
        depends=["rnnjax/_native/kernels.h", "rnnjax/_native/gemm.h"],
        include_dirs=[p for p in [jaxlib_include()] if p],
        define_macros=[("RNNJAX_MODULE", module), *((d, "1") for d in defines)],
        language="c++",
        extra_compile_args=[
            "-std=c++17",
            "-O3",
            f"-march={march}",
            "-fvisibility=hidden",
            "-pthread",
            "-w",
        ],
        extra_link_args=["-pthread"],
        optional=True,
    )


# _native_ext: the host's own vector code (gemm.h: 16 lanes where -march=native has AVX-512, else
# 8). On x86-64 also _native_ext_avx2, the 8-lane AVX2 code whatever the host: what an AVX2 host
# runs, built everywhere so that an AVX-512 host tests and measures it too (RNNJAX_NATIVE_ISA=avx2).
EXTENSIONS = [native_extension("_native_ext", "native", [])]
if platform.machine() in ("x86_64", "AMD64"):
    EXTENSIONS.append(native_extension("_native_ext_avx2", "haswell", ["RNNJAX_ISA_AVX2"]))

setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
