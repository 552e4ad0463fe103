"""Data parallelism with ``jax.sharding``: a 1-D device mesh with a ``"data"`` axis.

Batches (and the carry, every layer's recurrent state) are split along the batch dimension;
parameters, optimizer state and metric sums are replicated. The train step is the same jitted
function: XLA inserts the gradient all-reduce. With several processes (``jax.distributed``), every
process builds the same host batches from the seed and places only its own devices' rows
(``make_array_from_callback``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rnnjax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh and the two placements every array of a run uses."""

    mesh: Mesh
    split_batch: bool = True  # False: batches are replicated too (the layer pipeline's placement)

    @classmethod
    def create(cls, num_devices: int, batch_size: int) -> DataParallel:
        """A mesh over the first ``num_devices`` devices (0 = all, across all processes)."""
        devices = jax.devices()
        n = len(devices) if num_devices == 0 else num_devices
        if n > len(devices):
            raise ConfigError(
                f"config.parallel.num_devices = {n} but only {len(devices)} devices are visible; "
                "use 0 (all) or fewer"
            )
        if batch_size % n:
            raise ConfigError(
                f"config.data.batch_size = {batch_size} does not divide by the {n} devices; "
                f"use a multiple of {n} or set config.parallel.num_devices"
            )
        return cls(Mesh(np.asarray(devices[:n]), ("data",)))

    @classmethod
    def replicated_over(cls, num_devices: int) -> DataParallel:
        """Everything (batches too) on each of the first ``num_devices`` devices: the placement the
        layer pipeline (:mod:`rnnjax.network.impls.pipeline`) runs from; its shard_map splits the
        layers."""
        return cls(Mesh(np.asarray(jax.devices()[:num_devices]), ("data",)), split_batch=False)

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self, ndim: int, axis: int) -> NamedSharding:
        if not self.split_batch:
            return self.replicated
        spec = [None] * ndim
        spec[axis] = "data"
        return NamedSharding(self.mesh, P(*spec))

    def shard(self, host: np.ndarray, axis: int) -> jax.Array:
        """A global array from a host array (identical on every process), split on ``axis``."""
        host = np.asarray(host)
        sharding = self.batch_sharding(host.ndim, axis)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def replicate(self, host: np.ndarray) -> jax.Array:
        """A global array holding ``host`` (identical on every process) on every device."""
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

    def shard_carry(self, carry: Any) -> Any:
        """A carry pytree of [b, h] arrays, split on the batch axis."""
        return jax.tree_util.tree_map(lambda x: self.shard(np.asarray(x), 0), carry)

    def abstract(self, tree: Any) -> Any:
        """``jax.ShapeDtypeStruct``s with each array's sharding: the restore target."""
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )


def cpu_device_count(cpu_devices: int, batch_size: int, cores: int | None = None) -> int:
    """How many CPU devices ``config.parallel.cpu_devices`` asks for: itself if >= 1; for 0, the
    largest n <= cores (this process's usable cores) that divides ``batch_size``."""
    if cpu_devices >= 1:
        return cpu_devices
    cores = cores or len(os.sched_getaffinity(0))
    return max(n for n in range(1, cores + 1) if batch_size % n == 0)


def pipeline_device_count(cpu_devices: int, num_layers: int, cores: int | None = None) -> int:
    """CPU devices for the layer pipeline (``config.parallel.cpu_pipeline``): ``cpu_devices`` if
    >= 2, else one per core; never more than ``num_layers`` (a stage holds at least one layer)."""
    n = cpu_devices if cpu_devices >= 2 else (cores or len(os.sched_getaffinity(0)))
    return max(1, min(n, num_layers))


def set_cpu_devices_for(cfg: Any) -> int:
    """:func:`set_cpu_devices` for a resolved config: data-parallel devices, or the pipeline's."""
    p = cfg.parallel
    if p.cpu_pipeline:
        n = pipeline_device_count(p.cpu_devices, cfg.model.num_layers)
        return set_cpu_devices(n, cfg.data.batch_size)
    return set_cpu_devices(p.cpu_devices, cfg.data.batch_size)


def set_cpu_devices(cpu_devices: int, batch_size: int) -> int:
    """Make the CPU backend expose ``cpu_device_count(...)`` devices (the cores split between them).

    Must run before JAX starts a backend (the first array or ``jax.devices()``): scripts call it
    first thing; in a notebook call it right after ``import jax``. Returns the count. Has no
    effect on which devices a GPU/TPU run uses. Raises ConfigError when JAX already started
    with a different count.
    """
    n = cpu_device_count(cpu_devices, batch_size)
    if n == 1 and cpu_devices == 1:
        return 1
    previous = jax.config.jax_num_cpu_devices
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        if len(jax.devices("cpu")) != n:
            raise ConfigError(
                f"config.parallel.cpu_devices = {cpu_devices} ({n} CPU devices) must be set before "
                "JAX starts; run through scripts/train.py, or call "
                "rnnjax.network.parallel.set_cpu_devices right after import jax"
            ) from e
        return n
    cores = len(os.sched_getaffinity(0))
    if n > cores:  # JAX has not started: put the setting back and refuse
        jax.config.update("jax_num_cpu_devices", previous)
        raise ConfigError(
            f"config.parallel.cpu_devices = {cpu_devices} is more than this host's {cores} usable "
            f"cores; use 0 (one device per core) or a number up to {cores}"
        )
    return n


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start JAX's distributed runtime (call once per process, before any other JAX call).

    Unset arguments are auto-detected by ``jax.distributed.initialize`` from the usual
    environment (SLURM, Open MPI, Cloud TPU, or JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID). On CPU the collectives go through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
