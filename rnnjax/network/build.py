"""From a config to the model and its placement: what training, ``rnnjax.load`` and the benchmarks
build a run from (no training code here)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from rnnjax.cells import CELLS
from rnnjax.config import Config, ConfigError
from rnnjax.network.impls import pipeline
from rnnjax.network.model import DeepRNN, Impl, Placed, Placement, resolve_impl
from rnnjax.network.parallel import DataParallel, pipeline_device_count
from rnnjax.rundir.integrity import leaves


def build_model(cfg: Config, vocab_size: int) -> DeepRNN | Placed:
    """The model the config asks for (``model.impl``: an :class:`Impl` value) and, where it runs
    other than on one device, its :class:`Placement` (``parallel.cpu_pipeline``: its layers
    pipelined over the CPU devices; ``impl="cudnn"`` and ``"native"``: the kernel's call split over
    the data-parallel devices). ``model.impl = "auto"`` is resolved here for the devices the run's
    batch is split over (:func:`rnnjax.network.model.resolve_impl`)."""
    m, p = cfg.model, cfg.parallel
    # the devices each step's batch is split over (the pipeline replicates it over its stages)
    split_over = 1 if p.cpu_pipeline else (p.num_devices or len(jax.devices()))
    impl = resolve_impl(m.impl, m.cell, split_over)
    spec = DeepRNN(
        vocab_size,
        m.hidden_size,
        m.num_layers,
        m.cell,
        tuple(m.activation),
        m.dropout,
        impl,
        output_dropout=m.output_dropout,
        locked_dropout=m.locked_dropout,
        weight_drop=m.weight_drop,
    )
    stages = pipeline_device_count(p.cpu_devices, m.num_layers) if p.cpu_pipeline else 1
    # a kernel call (cuDNN's, native's) runs under shard_map over the data-parallel devices: XLA
    # cannot partition it, and would otherwise run the whole batch on every device
    data_devices = split_over if impl in (Impl.CUDNN, Impl.NATIVE) else 1
    placement = Placement(stages, p.pipeline_chunks, data_devices)
    return (
        spec
        if placement == Placement(pipeline_chunks=p.pipeline_chunks)
        else Placed.of(spec, placement)
    )


def make_placement(cfg: Config) -> DataParallel:
    """Where the run's arrays live: split over ``parallel.num_devices`` devices (data parallel), or
    replicated over the layer pipeline's stages (``parallel.cpu_pipeline``)."""
    if cfg.parallel.cpu_pipeline:
        if jax.process_count() > 1:
            raise ConfigError(
                "config.parallel.cpu_pipeline runs in one process; set it to False for "
                "multi-process runs"
            )
        stages = pipeline_device_count(cfg.parallel.cpu_devices, cfg.model.num_layers)
        return DataParallel.replicated_over(pipeline.stages_for(cfg.model.num_layers, stages))
    return DataParallel.create(cfg.parallel.num_devices, cfg.data.batch_size)


def param_shapes(cfg: Config, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter the config's model has, by key path (nothing is computed)."""
    params = jax.eval_shape(build_model(cfg, vocab_size).init, jax.random.key(0))
    return {name: tuple(x.shape) for name, x in leaves(params)}


def shape_mismatch(
    cfg: Config, vocab_size: int, stored: dict[str, tuple[int, ...]], source: str
) -> str | None:
    """Why params saved with the shapes ``stored`` do not fit the model ``cfg`` (from ``source``,
    e.g. "config.json") makes, naming the field whose other value would make them fit where one
    does (None: they fit). Tried: each model field that sets a shape, over the values the saved
    shapes and the cell registry allow, and the vocabulary's size (vocab.json)."""
    want = param_shapes(cfg, vocab_size)
    if want == stored:
        return None
    first = next(n for n in sorted({*want, *stored}) if want.get(n) != stored.get(n))
    detail = (
        f"{first}: {stored.get(first, 'absent')} saved, {want.get(first, 'absent')} by {source}"
    )
    dims = sorted({d for shape in stored.values() for d in shape})
    tries: list[tuple[str, Any]] = [
        *(("cell", c) for c in CELLS),
        *(("num_layers", n) for n in range(1, 33)),
        *(("hidden_size", d) for d in dims),
    ]
    for field, value in tries:
        if getattr(cfg.model, field) == value:
            continue
        other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{field: value}))
        try:
            fits = param_shapes(other, vocab_size) == stored
        except Exception:  # noqa: BLE001 - a combination the model refuses: not the answer
            continue
        if fits:
            return (
                f"{source} has model.{field} = {getattr(cfg.model, field)!r} but the checkpoint's "
                f"params are those of {value!r} ({detail}); set model.{field} back to {value!r}"
            )
    for size in dims:
        if size != vocab_size and param_shapes(cfg, size) == stored:
            return (
                f"vocab.json has {vocab_size} tokens but the checkpoint's params are those of "
                f"{size} ({detail}); restore vocab.json from a copy"
            )
    return f"the checkpoint's params do not fit {source} ({detail}); restore it from a copy"
