"""cuDNN's fused LSTM as an implementation of rnnjax's stack (``config.model.impl = "cudnn"``).

``jax.experimental.rnn.lstm`` calls cuDNN's LSTM on CUDA (LSTM only, float32, no CPU lowering).
A layer's params pack into cuDNN's flat vector with a transpose, a reshape and a concatenation
(:func:`pack`; :func:`unpack` is its inverse), so checkpoints are interchangeable with
``impl="rnnjax"``. Each layer is one cuDNN call, run by the one stack loop with rnnjax's dropout;
:func:`reference_kernel` is the same call in pure JAX, for tests on the CPU. Details (TF32,
placement over data devices): docs/devices.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn as jrnn
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rnnjax.config import ConfigError
from rnnjax.network import stack

Array = jax.Array
Params = dict[str, Any]
# kernel(x [b, t, d], h0 [1, b, h], c0 [1, b, h], weights [n], seq_lengths [b] int32, input_size,
# hidden_size)
#   -> (y [b, t, h], h_n [1, b, h], c_n [1, b, h])
Kernel = Callable[..., tuple[Array, Array, Array]]


class CudnnUnavailable(ConfigError):
    """``impl="cudnn"`` asked for where JAX has no CUDA GPU."""


def available() -> bool:
    """Whether JAX's default backend is a CUDA GPU (where cuDNN's LSTM lowers)."""
    try:
        if jax.default_backend() != "gpu":
            return False
        # "gpu" is CUDA or ROCm; only ROCm names itself in the client's version string
        return "rocm" not in str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    except Exception:  # noqa: BLE001 -- no backend at all: not available
        return False


def check_available() -> None:
    """Raise :class:`CudnnUnavailable` (one line, with the fix) unless cuDNN's LSTM can run here."""
    if not available():
        raise CudnnUnavailable(
            "config.model.impl = 'cudnn' needs an NVIDIA GPU with CUDA (JAX's backend here is "
            f"{jax.default_backend()}, devices {jax.devices()[0].platform}); use model.impl = "
            "'rnnjax' (the same params: checkpoints are interchangeable)"
        )


def num_weights(input_size: int, hidden_size: int) -> int:
    """Length of one layer's flat cuDNN weight vector."""
    return jrnn.get_num_params_in_lstm(input_size, hidden_size, 1, False)


def pack(layer: Params) -> Array:
    """One rnnjax LSTM layer {"w_x": [d, 4h], "w_h": [h, 4h], "b_x": [4h], "b_h": [4h]} -> cuDNN's
    flat vector: (W_ih [4h, d], W_hh [4h, h], b_ih, b_hh) row-major, gates i, f, g, o (PyTorch's
    order)."""
    return jnp.concatenate(
        [layer["w_x"].T.reshape(-1), layer["w_h"].T.reshape(-1), layer["b_x"], layer["b_h"]]
    )


def unpack(weights: Array, input_size: int, hidden_size: int) -> Params:
    """The inverse of :func:`pack` (via ``jax.experimental.rnn.unpack_lstm_weights``)."""
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    return {"w_x": w_ih[0].T, "w_h": w_hh[0].T, "b_x": b_ih[0], "b_h": b_hh[0]}


def cudnn_kernel(x, h0, c0, weights, seq_lengths, input_size: int, hidden_size: int):
    """One layer by cuDNN (``jax.experimental.rnn.lstm``); precision from JAX's matmul-precision
    config."""
    return jrnn.lstm(x, h0, c0, weights, seq_lengths, input_size, hidden_size, 1, 0.0, False)


def reference_kernel(x, h0, c0, weights, seq_lengths, input_size: int, hidden_size: int):
    """The same layer by ``jax.experimental.rnn.lstm_ref`` (pure JAX, any backend)."""
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    return jrnn.lstm_ref(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, 1, 0.0, False
    )


def _layer(
    kernel: Kernel, x_btd: Array, carry: tuple[Array, Array], weights: Array, hidden_size: int
) -> tuple[Array, tuple[Array, Array]]:
    c0, h0 = carry
    b, t, d = x_btd.shape
    seq_lengths = jnp.full((b,), t, jnp.int32)
    y_bth, h_n, c_n = kernel(x_btd, h0[None], c0[None], weights, seq_lengths, d, hidden_size)
    return y_bth, (c_n[0], h_n[0])


def _sharded(kernel: Kernel, hidden_size: int, devices: int, batch: int):
    """The layer, under shard_map over the first ``devices`` devices' data axis when the batch
    splits."""
    layer = functools.partial(_layer, kernel, hidden_size=hidden_size)
    if devices <= 1 or batch % devices:
        return layer
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
    rows = P("data")
    return jax.shard_map(
        layer,
        mesh=mesh,
        in_specs=(rows, (rows, rows), P()),
        out_specs=(rows, (rows, rows)),
        check_vma=False,
    )


def apply(
    spec: Any,
    params: Params,
    tokens: Array,
    carry: Any,
    dropout_key: Array | None,
    placement: Any = None,
    kernel: Kernel | None = None,
) -> tuple[Array, Any]:
    """The :class:`rnnjax.network.model.Stack` apply: tokens [b, t] -> (logits [b, t, V], new
    carry).

    ``kernel``: :func:`cudnn_kernel` by default (after :func:`check_available`), or
    :func:`reference_kernel`. Layers run through :func:`rnnjax.network.stack.run` (its dropout
    masks); ``placement.data_devices`` > 1 (:class:`rnnjax.network.model.Placement`) splits the
    batch over devices.
    """
    if kernel is None:
        check_available()
        kernel = cudnn_kernel
    b, t = tokens.shape
    run_layer = _sharded(kernel, spec.hidden_size, placement.data_devices if placement else 1, b)

    def layer(l, p, x, layer_carry):  # cuDNN reads [b, t, d]; layer 1 reads one-hot tokens
        x_btd = (
            jax.nn.one_hot(x.T, spec.vocab_size, dtype=jnp.float32)
            if l == 0
            else jnp.swapaxes(x, 0, 1)
        )
        y_bth, layer_carry = run_layer(x_btd, layer_carry, pack(p))
        return jnp.swapaxes(y_bth, 0, 1), layer_carry, None

    h_tbh, new_carry, _ = stack.run(spec, layer, params["layers"], tokens.T, carry, dropout_key)
    return stack.logits(params, h_tbh), new_carry
