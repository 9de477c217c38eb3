"""blox.nn: the random stream `Rng` and the neural-network layers.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Linear, Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> y, params = Linear(graph.child('out'), 2, rng)(rng.seed(Params(), seed=0), jnp.ones(3))
  >>> y.shape
  (2,)
"""

from blox.nn import initializers
from blox.nn.dropout import Dropout
from blox.nn.linear import Linear
from blox.nn.rng import Rng

__all__ = [
    "Dropout",
    "Linear",
    "Rng",
    "initializers",
]
