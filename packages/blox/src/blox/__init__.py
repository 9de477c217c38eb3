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

from blox.graph import Graph, Module  # noqa: E402
from blox.nn import Dropout, Linear, Rng, initializers  # noqa: E402
from blox.params import Metadata, Param, Params, Path  # noqa: E402

__all__ = [
    "Dropout",
    "Graph",
    "Linear",
    "Metadata",
    "Module",
    "Param",
    "Params",
    "Path",
    "Rng",
    "initializers",
]
