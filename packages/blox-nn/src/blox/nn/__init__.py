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
from blox.nn._dot_product_attention import dot_product_attention
from blox.nn._kv_cache import KVCache
from blox.nn._masks import causal_mask, combine_masks, padding_mask
from blox.nn._multi_head_attention import MultiHeadAttention
from blox.nn.batch_norm import BatchNorm
from blox.nn.conv import Conv, ConvTranspose
from blox.nn.dropout import Dropout
from blox.nn.embed import Embed
from blox.nn.gru import GRU, GRUState
from blox.nn.linear import Linear
from blox.nn.lstm import LSTM, LSTMState
from blox.nn.normalization import LayerNorm, RMSNorm
from blox.nn.pooling import avg_pool, max_pool, min_pool
from blox.nn.rng import Rng
from blox.nn.sequential import Sequential

__all__ = [
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dropout",
    "Embed",
    "GRU",
    "GRUState",
    "KVCache",
    "LSTM",
    "LSTMState",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "RMSNorm",
    "Rng",
    "Sequential",
    "avg_pool",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "initializers",
    "max_pool",
    "min_pool",
    "padding_mask",
]
