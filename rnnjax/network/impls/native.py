"""Native recurrent layers on CPU (``model.impl = "native"``): each layer's whole time loop in one
XLA FFI call.

The compiled extension ``rnnjax._native_ext`` (``rnnjax/_native/``, built by ``pip install -e .``
with the machine's C++ compiler) holds, per kernel, a forward that saves what the backward needs and
a backward over the whole sequence; they run the recurrent GEMM (h_{t-1} W_h, W_h packed once per
call) and the cell's gates in one pass per step, with no per-step launches. XLA keeps the rest: the
input projections, the recurrent weights' gradients (one large matmul over all steps, as in
:mod:`rnnjax.network.impls.fused`), the loss and the update. A cell names its kernel in
``Cell.native``.

:func:`scan_layer` has :func:`rnnjax.network.impls.fused.scan_layer`'s signature and params, so
checkpoints are interchangeable with ``impl="rnnjax"``. Where the extension is missing (no compiler
at install, another OS) :func:`scan_layer` says so once, in one line, and runs the fused pure-JAX
layer. docs/implementation.md#native-layers explains the build and the fallback.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rnnjax import host
from rnnjax.cells import CELLS, check_supported
from rnnjax.cells.base import Params
from rnnjax.config.model_fields import Impl
from rnnjax.network.impls import fused

Array = jax.Array


ISA_ENV = "RNNJAX_NATIVE_ISA"
# Which build runs (setup.py): the host's own vector code (16 lanes on AVX-512, else 8), or the
# 8-lane AVX2 build (x86-64 only), which an AVX-512 host runs to test and measure an AVX2 host's
# path.
BUILDS = {"host": "_native_ext", "avx2": "_native_ext_avx2"}


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's flags from /proc/cpuinfo, read once (None where there is none to read)."""
    try:
        return frozenset(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def _cpu_has(*flags: str) -> bool:
    """Whether the CPU lists every flag (True where there is no /proc/cpuinfo to read)."""
    have = _cpu_flags()
    return have is None or all(f in have for f in flags)


def cpu_isa() -> str:
    """The widest x86 vector ISA of this CPU: "AVX-512", "AVX2" (with FMA) or "other"."""
    flags = _cpu_flags() or frozenset()
    return "AVX-512" if "avx512f" in flags else "AVX2" if {"avx2", "fma"} <= flags else "other"


def _elf_damage(path: pathlib.Path) -> str | None:
    """Why ``path`` is no whole ELF shared library (a cut-off copy, another format), or None. The
    section headers come last in a linked library: the file must reach their end."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELFCLASS64
        return "not a 64-bit ELF library"
    order = "little" if head[5] == 1 else "big"
    shoff = int.from_bytes(head[0x28:0x30], order)
    end = shoff + int.from_bytes(head[0x3A:0x3C], order) * int.from_bytes(head[0x3C:0x3E], order)
    if size < end:
        return f"{size:,} of its {end:,} bytes: cut off"
    return None


def _load() -> tuple[Any, str | None]:
    """The extension module and None, or None and why it cannot be used (one line)."""
    build = os.environ.get(ISA_ENV, "").strip() or "host"
    if build not in BUILDS:
        return None, (
            f"{ISA_ENV}={build!r} names no build: expected one of {', '.join(BUILDS)} "
            "(or unset it for the host's own)"
        )
    if build == "avx2" and not _cpu_has("avx2", "fma"):
        return None, f"{ISA_ENV}=avx2 asks for AVX2 code and this CPU has no AVX2 + FMA"
    module = BUILDS[build]
    # the extension built at the top of this package (setup.py: rnnjax/_native_ext*.so), never
    # one of another checkout of rnnjax
    here = pathlib.Path(__file__).resolve().parents[2]
    suffixes = [f"{module}{s}" for s in importlib.machinery.EXTENSION_SUFFIXES]
    found = [p for p in map(here.joinpath, suffixes) if p.is_file()]
    if not found:
        return None, f"the native extension is not built here (no {suffixes[0]} in {here})"
    if damage := _elf_damage(found[0]):  # dlopen of a cut-off library dies of SIGBUS
        return None, f"the native extension {found[0].name} is damaged ({damage})"
    try:
        spec = importlib.util.spec_from_file_location(f"rnnjax.{module}", found[0])
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
    except ImportError as e:
        return None, f"the native extension cannot be loaded ({e})"
    try:
        for name, (*_, fwd, bwd) in ext.KERNELS.items():
            jax.ffi.register_ffi_target(f"rnnjax_{name}_fwd", fwd, platform="cpu")
            jax.ffi.register_ffi_target(f"rnnjax_{name}_bwd", bwd, platform="cpu")
    except Exception as e:  # noqa: BLE001 -- an incompatible jaxlib: not available, said once
        return None, f"the native extension cannot be registered with this jax ({e})"
    return ext, None


_EXT, WHY_NOT = _load()
_said = False

MAX_THREADS = 8  # a step's GEMM is 32 x 4h: past a few workers the per-step barrier dominates


def default_threads() -> int:
    """Workers per step when a caller does not say: ``RNNJAX_NATIVE_THREADS`` if set, else the
    cores this process may run on (at most :data:`MAX_THREADS`). Results do not depend on it: each
    output is computed by one worker in one order (tests/test_native.py checks 1 vs 2 bitwise)."""
    env = host.threads_from_env()
    if env is not None:
        return env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_THREADS, cores or 1))


def isa() -> str:
    """The vector code of the loaded kernels: "avx512" (16 lanes), "avx2" (8 lanes + FMA) or
    "generic"; "none" where they are not loaded."""
    return getattr(_EXT, "ISA", "none")


def available() -> bool:
    """Whether the native kernels are built and registered (and JAX runs on a CPU)."""
    return _EXT is not None and jax.default_backend() == "cpu"


def why_not() -> str:
    """One line: why :func:`available` is False (empty when it is True)."""
    if _EXT is None:
        return str(WHY_NOT)
    return "" if available() else f"JAX's backend here is {jax.default_backend()}, not the CPU"


def fallback_note() -> str:
    """The one line that says ``impl="native"`` runs the pure-JAX fused layer here, and why; once
    returned it counts as said (a run's start block shows it: :func:`scan_layer` is then quiet)."""
    global _said
    _said = True
    return (
        f"model.impl = 'native' runs the pure-JAX fused layer: {why_not()}; "
        "reinstall with a C++ compiler (pip install -e .) to build it"
    )


def _say_fallback() -> None:
    if not _said:
        print(f"rnnjax: {fallback_note()}", file=sys.stderr)


def _check(cell: str, activation: str, rp: Params, xw_tbg: Array, leaves: list[Array]) -> None:
    """Refuse, in one line, operands the kernel cannot read (before any call)."""
    g = CELLS[cell].num_gates
    if xw_tbg.ndim != 3 or xw_tbg.shape[-1] % g:
        raise ValueError(
            f"native {cell} layer: xw must be [time, batch, {g}*hidden], got {xw_tbg.shape}"
        )
    t, b, gh = xw_tbg.shape
    want = {"xw": (xw_tbg, (t, b, gh)), "w_h": (rp["w_h"], (gh // g, gh))}
    want |= {"b_h": (rp["b_h"], (gh,))}
    want |= {f"carry[{i}]": (x, (b, gh // g)) for i, x in enumerate(leaves)}
    for name, (x, shape) in want.items():
        if x.dtype != jnp.float32:
            raise ValueError(
                f"native {cell} layer: {name} is {x.dtype}; the kernels are float32 only "
                "(use model.impl = 'rnnjax' for other dtypes)"
            )
        if tuple(x.shape) != shape:
            raise ValueError(f"native {cell} layer: {name} is {tuple(x.shape)}, expected {shape}")
    if activation not in _EXT.ACTIVATIONS:
        raise ValueError(
            f"native {cell} layer: no kernel for the activation {activation!r} "
            f"(one of {', '.join(map(repr, _EXT.ACTIVATIONS))})"
        )


def _kernel(cell: str) -> tuple[str, int, int, bool]:
    """(kernel name, carry slabs, save slabs, separate dhw) of the cell's kernel."""
    name = CELLS[cell].native
    _, ns, s, sep, *_ = _EXT.KERNELS[name]
    return name, ns, s, sep


def _forward(cell, activation, threads, rp, xw_tbg, carry):
    """The forward call: (h_tbh, final carry, saves)."""
    name, _, s, _ = _kernel(cell)
    leaves, tree = jax.tree_util.tree_flatten(carry)
    t, b, gh = xw_tbg.shape
    h = gh // CELLS[cell].num_gates
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    h_tbh, state, saves = jax.ffi.ffi_call(
        f"rnnjax_{name}_fwd",
        (f32(t, b, h), f32(len(leaves), b, h), f32(t, b, s * h)),
        vmap_method="sequential",
    )(
        xw_tbg,
        rp["w_h"],
        rp["b_h"],
        jnp.stack(leaves),
        act=np.int64(_EXT.ACTIVATIONS[activation]),
        threads=np.int64(threads),
    )
    return h_tbh, jax.tree_util.tree_unflatten(tree, list(state)), saves


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer(cell: str, activation: str, threads: int, rp: Params, xw_tbg: Array, carry: Any):
    h_tbh, final, _ = _forward(cell, activation, threads, rp, xw_tbg, carry)
    return h_tbh, final


def _layer_fwd(cell, activation, threads, rp, xw_tbg, carry):
    h_tbh, final, saves = _forward(cell, activation, threads, rp, xw_tbg, carry)
    return (h_tbh, final), (rp, carry, h_tbh, saves)


def _layer_bwd(cell, activation, threads, res, cot):
    rp, carry0, h_tbh, saves = res
    dh_tbh, dfinal = cot
    name, ns, _, sep = _kernel(cell)
    leaves, tree = jax.tree_util.tree_flatten(carry0)
    t, b, h = h_tbh.shape
    gh = rp["w_h"].shape[1]
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    dxw, dhw, dstate = jax.ffi.ffi_call(
        f"rnnjax_{name}_bwd",
        (f32(t, b, gh), f32(t, b, gh if sep else 0), f32(ns, b, h)),
        vmap_method="sequential",
    )(
        rp["w_h"],
        saves,
        h_tbh,
        jnp.stack(leaves),
        dh_tbh,
        jnp.stack(jax.tree_util.tree_leaves(dfinal)),
        act=np.int64(_EXT.ACTIVATIONS[activation]),
        threads=np.int64(threads),
    )
    c = CELLS[cell]
    h_prev = fused._shift(c.hidden(carry0), h_tbh)
    drp = c.recurrence.grads(rp, h_prev, dhw if sep else dxw)  # one matmul over all t*b rows
    return drp, dxw, jax.tree_util.tree_unflatten(tree, list(dstate))


_layer.defvjp(_layer_fwd, _layer_bwd)


def forward_with_saves(
    cell: str, activation: str, params: Params, xw_tbg: Array, carry: Any
) -> tuple[Array, Any, tuple[Array, ...]]:
    """The kernel's forward alone (no gradient): (h_tbh [t, b, h], final carry, its saves as slabs,
    each [t, b, h]: ``Cell.from_native`` reads them). For the validation pass's statistics
    (:mod:`rnnjax.training.trace`): one forward gives the logits and the gates. Needs
    :func:`available`."""
    rp = fused._recurrent_params(params)
    _check(cell, activation, rp, xw_tbg, jax.tree_util.tree_leaves(carry))
    h_tbh, final, saves = _forward(cell, activation, default_threads(), rp, xw_tbg, carry)
    s = _kernel(cell)[2]
    return h_tbh, final, tuple(jnp.split(saves, s, axis=-1))


def _per_device(cell: str, activation: str, devices: int, rp: Params, xw_tbg: Array, carry: Any):
    """The layer under ``shard_map`` over the first ``devices`` devices' batch rows: each device
    runs the kernel on its own rows with one worker (a device is a core), with no hand-off between
    devices inside the loop; XLA sums the replicated weights' gradients over the devices."""
    rows, batch_rows = P("data"), P(None, "data")
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
    run = functools.partial(_layer, cell, activation, 1)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(P(), batch_rows, jax.tree_util.tree_map(lambda _: rows, carry)),
        out_specs=(batch_rows, jax.tree_util.tree_map(lambda _: rows, carry)),
        check_vma=False,
    )(rp, xw_tbg, carry)


def scan_layer(
    cell: str,
    activation: str,
    params: Params,
    xw_tbg: Array,
    carry: Any,
    threads: int | None = None,
    devices: int = 1,
) -> tuple[Array, Any]:
    """One layer over time in the native kernel: :func:`rnnjax.network.impls.fused.scan_layer`'s
    contract. xw_tbg [t, b, G*h] float32; ``params``: the layer's (w_x, b_x are not read); carry:
    the cell's. Returns (h_tbh [t, b, h], final carry). ``threads`` workers split each step (None:
    :func:`default_threads`; the result does not depend on it). ``devices`` > 1 (data parallel,
    :class:`rnnjax.network.model.Placement`): the batch rows split over the first ``devices``
    devices, one kernel call and one worker each (where the batch divides; else one call over the
    whole batch). Without the extension: the fused pure-JAX layer, said once on stderr."""
    check_supported(Impl.NATIVE, cell)
    if not available():
        _say_fallback()
        return fused.scan_layer(cell, activation, params, xw_tbg, carry)
    rp = fused._recurrent_params(params)
    _check(cell, activation, rp, xw_tbg, jax.tree_util.tree_leaves(carry))
    if devices > 1 and xw_tbg.shape[1] % devices == 0:
        return _per_device(cell, activation, devices, rp, xw_tbg, carry)
    threads = default_threads() if threads is None else int(threads)
    return _layer(cell, activation, threads, rp, xw_tbg, carry)
