"""The network: the stacked model and its config (model), the stack loop over layers (stack),
building one from a config (build), its placement over devices (parallel) and sampling text
from it (sampling). The layer implementations live in :mod:`rnnjax.network.impls`."""
