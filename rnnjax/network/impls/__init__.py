"""One recurrent layer, several ways, the same numbers: the fused pure-JAX layer with its own
backward (fused, the reference), the native kernels through XLA FFI (native), cuDNN (cudnn),
Flax's cells (flax_model), and the layer pipeline over CPU devices (pipeline)."""
