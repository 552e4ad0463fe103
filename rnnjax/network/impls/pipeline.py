"""A layer pipeline over CPU devices: every core runs its own layers at the full batch.

The layers are cut into S contiguous blocks, block s on device s (mesh axis ``"stage"``), and
the sequence into C time chunks; at tick k, stage s runs chunk k - s and hands its top layer's
outputs to stage s + 1 (``jax.lax.ppermute``). The ticks are one ``lax.scan`` inside
``jax.shard_map``, so autodiff of it is the backward pipeline. The params, carry and dropout masks
are the plain stack's. :func:`plan` says what a configuration runs; the design and the bubble
are in docs/devices.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rnnjax.network import stack

Array = jax.Array
AXIS = "stage"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a stack of ``num_layers`` runs over ``stages`` devices: ``layers_per_stage`` contiguous
    layers each (the last stage may hold fewer), the sequence in ``num_chunks`` chunks."""

    num_layers: int
    stages: int
    layers_per_stage: int
    num_chunks: int

    @property
    def bubble(self) -> float:
        """Fraction of the pipeline's ticks a stage idles: (S - 1) / (C + S - 1)."""
        return (self.stages - 1) / (self.num_chunks + self.stages - 1)

    def layer(self, stage: int, slot: int) -> int:
        """The layer (0-based) in ``slot`` of ``stage``; >= num_layers for an empty slot."""
        return stage * self.layers_per_stage + slot


def plan(num_layers: int, num_devices: int, seq_len: int, num_chunks: int) -> Plan:
    """Layers per stage = ceil(L / D); stages = as many as those blocks fill (no stage is left
    empty, so L = 3 on 2 devices is [2, 1] and L = 5 on 4 devices is [2, 2, 1]); chunks = the
    divisor of ``seq_len`` nearest ``num_chunks`` (chunks are equal; the larger on a tie)."""
    k = math.ceil(num_layers / max(1, min(num_devices, num_layers)))
    stages = math.ceil(num_layers / k)
    divisors = [c for c in range(1, seq_len + 1) if seq_len % c == 0]
    chunks = min(divisors, key=lambda c: (abs(c - num_chunks), -c))
    return Plan(num_layers, stages, k, chunks)


def stages_for(num_layers: int, pipeline_stages: int) -> int:
    """The stages a stack of ``num_layers`` runs here with ``Placement.pipeline_stages``: as many as
    this process's devices and its layers allow (1 = the plain stack, e.g. on a single device)."""
    if pipeline_stages <= 1:
        return 1
    return plan(num_layers, min(pipeline_stages, jax.local_device_count()), 1, 1).stages


def mesh(stages: int) -> Mesh:
    """A 1-D mesh of the first ``stages`` devices along ``"stage"``."""
    return Mesh(np.asarray(jax.devices()[:stages]), (AXIS,))


class _Slots(NamedTuple):
    """A stage's K slots as the stack loop sees them (:class:`rnnjax.network.stack.Spec`): the layer
    index of a slot depends on the stage, so its dropout is the slot's own."""

    hidden_size: int
    num_layers: int
    dropout: float = 0.0
    output_dropout: float = 0.0


def _stack(trees: list[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree_util.tree_map(lambda x: x[i], tree) for i in range(n)]


def pipelined_layers(
    spec: Any,
    layer_fn: Callable,
    layers: list[dict],
    tokens_tb: Array,
    carry: tuple,
    dropout_key: Array | None,
    num_devices: int,
    num_chunks: int,
) -> tuple[Array, tuple]:
    """The stack's L layers over time, pipelined; the same values as
    :func:`rnnjax.network.stack.run`.

    ``layer_fn(cell, activation, p, xw_tbg, carry) -> (h_tbh, carry)`` runs one layer (the plain
    stack's); ``tokens_tb`` [t, b]; ``carry`` one carry per layer; dropout between layers with
    :func:`rnnjax.network.stack.dropout_keep`'s masks (``dropout_key`` None: none). Runs on the
    first S of ``num_devices`` devices, the sequence in about ``num_chunks`` chunks (:func:`plan`).
    Returns the top layer's outputs [t, b, h] (before output dropout) and the new carry.
    """
    activations = tuple(map(spec.layer_activation, range(spec.num_layers)))
    cell, rate = spec.cell, spec.dropout
    xw0_tbg = stack.input_projection(0, layers[0], tokens_tb)
    t, b = tokens_tb.shape
    keep_ltbh = (
        jnp.stack(
            [
                stack.dropout_keep(dropout_key, l, rate, (t, b, spec.hidden_size))
                for l in range(spec.num_layers - 1)
            ]
        )
        if dropout_key is not None and rate > 0
        else None
    )
    L = len(layers)
    t, b, _ = xw0_tbg.shape
    pl = plan(L, num_devices, t, num_chunks)
    S, K, C = pl.stages, pl.layers_per_stage, pl.num_chunks
    tc = t // C
    hidden = jax.tree_util.tree_leaves(carry[0])[0].shape[-1]
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)  # noqa: E731

    # Every slot gets the same shapes: layer 1's w_x [V, G] (its projection is xw0) becomes a
    # [h, G] zero block in the stage stack, like every param of an empty slot.
    slots = []
    for l in (pl.layer(s, k) for s in range(S) for k in range(K)):
        p = dict(layers[l]) if l < L else zeros(layers[-1])
        if l == 0:
            p["w_x"] = jnp.zeros((hidden, p["w_x"].shape[1]), p["w_x"].dtype)
        slots.append(p)
    by_stage = lambda tree: jax.tree_util.tree_map(lambda x: x.reshape(S, K, *x.shape[1:]), tree)  # noqa: E731
    params_sk = by_stage(_stack(slots))
    carry_sk = by_stage(_stack([carry[l] if l < L else zeros(carry[0]) for l in range(S * K)]))
    dropout = keep_ltbh is not None
    if (
        dropout
    ):  # slot (s, k)'s mask, in chunks: [S, K, C, tc, b, h]; the top layer's (all True) is unused
        pad = jnp.ones((S * K - (L - 1), *keep_ltbh.shape[1:]), bool)
        keep_sk = jnp.concatenate([keep_ltbh, pad]).reshape(S, K, C, tc, b, hidden)
    else:
        keep_sk = jnp.ones((S, K, 1, 1, 1, 1), bool)
    xw0_c = xw0_tbg.reshape(C, tc, b, -1)

    def branch(l: int) -> Callable:
        """A slot's work for layer l: (p, h_in, xw0, carry, keep) -> (h_out, carry); none for l >=
        L."""
        if l >= L:
            return lambda p, h_in, xw0, c, keep: (h_in, c)

        def run(p, h_in, xw0, c, keep):
            xw = xw0 if l == 0 else stack.input_projection(l, p, h_in)
            h, c = layer_fn(cell, activations[l], p, xw, c)
            if dropout and l < L - 1:
                h = stack.apply_dropout(h, keep, rate)
            return h, c

        return run

    def stage_fn(params_k, carry_k, keep_k, xw0_c):
        s = jax.lax.axis_index(AXIS)
        params_k, carry_k, keep_k = (
            jax.tree_util.tree_map(lambda x: x[0], a) for a in (params_k, carry_k, keep_k)
        )

        def tick(state, k):
            h_in, carry_k = state  # h_in: the stage below's outputs for this chunk
            j = k - s  # the chunk this stage works on at tick k
            jc = jnp.clip(j, 0, C - 1)
            work = jnp.where(
                (j >= 0) & (j < C), s, S
            )  # branch S: a tick in the bubble computes nothing
            xw0 = xw0_c[jc]

            def slot_layer(slot: int, p, h, c):
                """The stack loop's layer: slot ``slot`` of this stage, i.e. layer s * K + slot."""
                keep = keep_k[slot, jc] if dropout else keep_k[slot, 0]
                branches = [branch(pl.layer(st, slot)) for st in range(S)] + [branch(L)]
                return (*jax.lax.switch(work, branches, p, h, xw0, c, keep), None)

            # The stage's K slots through the one stack loop; dropout is the slot's own (above).
            h_in, new, _ = stack.run(
                _Slots(hidden, K),
                slot_layer,
                _unstack(params_k, K),
                h_in,
                tuple(_unstack(carry_k, K)),
                None,
            )
            h_up = jax.lax.ppermute(h_in, AXIS, [(i, i + 1) for i in range(S - 1)])
            return (h_up, _stack(list(new))), h_in

        h0 = jnp.zeros((tc, b, hidden), xw0_c.dtype)
        (_, carry_k), out_ktbh = jax.lax.scan(tick, (h0, carry_k), jnp.arange(C + S - 1))
        return out_ktbh[None], jax.tree_util.tree_map(lambda x: x[None], carry_k)

    spec = P(AXIS)
    out_sktbh, carry_sk = jax.shard_map(
        stage_fn,
        mesh=mesh(S),
        in_specs=(spec, spec, spec, P()),
        out_specs=(spec, spec),
        check_vma=False,
    )(params_sk, carry_sk, keep_sk, xw0_c)
    h_top_tbh = out_sktbh[S - 1, S - 1 : S - 1 + C].reshape(
        t, b, hidden
    )  # the last stage's working ticks
    carry_l = jax.tree_util.tree_map(lambda x: x.reshape(S * K, *x.shape[2:]), carry_sk)
    return h_top_tbh, tuple(_unstack(carry_l, S * K)[:L])
