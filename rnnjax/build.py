"""From a config to the model and its placement: what training, ``rnnjax.load`` and the benchmarks
build a run from (no training code here)."""

from __future__ import annotations

import jax

from rnnjax import pipeline
from rnnjax.config import Config, ConfigError
from rnnjax.model import DeepRNN, Impl, Placed, Placement, resolve_impl
from rnnjax.parallel import DataParallel, pipeline_device_count


def build_model(cfg: Config, vocab_size: int) -> DeepRNN | Placed:
    """The model the config asks for (``model.impl``: an :class:`Impl` value) and, where it runs
    other than on one device, its :class:`Placement` (``parallel.cpu_pipeline``: its layers
    pipelined over the CPU devices; ``impl="cudnn"`` and ``"native"``: the kernel's call split over
    the data-parallel devices). ``model.impl = "auto"`` is resolved here for the devices the run's
    batch is split over (:func:`rnnjax.model.resolve_impl`)."""
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
        else Placed(spec, placement)
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
