"""blox: functional neural networks for JAX with explicit state.

`outputs, params = module(params, inputs)`: all state lives in an immutable
`Params` container that is passed in and returned.

Example:
  >>> import blox as bx
  >>> import jax.numpy as jnp
  >>> graph = bx.Graph('net')
  >>> rng = bx.Rng(graph.child('rng'))
  >>> linear = bx.Linear(graph.child('linear'), output_size=2, rng=rng)
  >>> params = rng.seed(bx.Params(), seed=0)
  >>> y, params = linear(params, jnp.ones((1, 3)))
  >>> y.shape
  (1, 2)
"""

# blox.params, blox.graph, blox.nn and blox.parallel are installed as separate
# distributions that share the `blox` name; this umbrella owns blox/__init__.py,
# so it must extend the package path for Python to find the other portions.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from blox.graph import (  # noqa: E402
    Graph,
    Module,
    RecurrenceBase,
    SequenceBase,
    dynamic_scan,
    maybe_reset_state,
    static_scan,
    summary,
)
from blox.nn import (  # noqa: E402
    GRU,
    LSTM,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dropout,
    Embed,
    GRUState,
    KVCache,
    LayerNorm,
    Linear,
    LSTMState,
    MultiHeadAttention,
    RMSNorm,
    Rng,
    Sequential,
    avg_pool,
    initializers,
    max_pool,
    min_pool,
)
from blox import parallel  # noqa: E402
from blox.params import (  # noqa: E402
    CheckpointError,
    CheckpointWarning,
    KeySource,
    Metadata,
    Param,
    Params,
    Path,
    load,
    param_mask,
    save,
    value_and_grad,
)

__all__ = [
    "BatchNorm",
    "CheckpointError",
    "CheckpointWarning",
    "Conv",
    "ConvTranspose",
    "Dropout",
    "Embed",
    "GRU",
    "GRUState",
    "Graph",
    "KVCache",
    "KeySource",
    "LSTM",
    "LSTMState",
    "LayerNorm",
    "Linear",
    "Metadata",
    "Module",
    "MultiHeadAttention",
    "Param",
    "Params",
    "Path",
    "RMSNorm",
    "RecurrenceBase",
    "Rng",
    "SequenceBase",
    "Sequential",
    "avg_pool",
    "dynamic_scan",
    "initializers",
    "load",
    "max_pool",
    "maybe_reset_state",
    "min_pool",
    "parallel",
    "param_mask",
    "save",
    "static_scan",
    "summary",
    "value_and_grad",
]
