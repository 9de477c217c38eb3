"""blox.nn: the random stream `Rng` and the neural-network layers.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Linear, Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> y, params = Linear(graph.child('out'), 2, rng=rng)(rng.seed(Params(), seed=0), jnp.ones(3))
  >>> y.shape
  (2,)
"""

from blox.nn import initializers as initializers
from blox.nn._batch_norm import BatchNorm as BatchNorm
from blox.nn._contract import ConvDimensions as ConvDimensions
from blox.nn._contract import Contraction as Contraction
from blox.nn._contract import ContractionHook as ContractionHook
from blox.nn._contract import contract as contract
from blox.nn._contract import contraction_hooks as contraction_hooks
from blox.nn._contract import set_contraction_hook as set_contraction_hook
from blox.nn._conv import Conv as Conv
from blox.nn._conv import ConvTranspose as ConvTranspose
from blox.nn._dot_product_attention import dot_product_attention as dot_product_attention
from blox.nn._dropout import Dropout as Dropout
from blox.nn._embed import Embed as Embed
from blox.nn._gru import GRU as GRU
from blox.nn._gru import GRUState as GRUState
from blox.nn._kv_cache import KVCache as KVCache
from blox.nn._linear import Linear as Linear
from blox.nn._lstm import LSTM as LSTM
from blox.nn._losses import softmax_cross_entropy as softmax_cross_entropy
from blox.nn._lstm import LSTMState as LSTMState
from blox.nn._masks import causal_mask as causal_mask
from blox.nn._mlp import MLP as MLP
from blox.nn._mlp import GatedMLP as GatedMLP
from blox.nn._masks import combine_masks as combine_masks
from blox.nn._masks import padding_mask as padding_mask
from blox.nn._multi_head_attention import MultiHeadAttention as MultiHeadAttention
from blox.nn._normalization import LayerNorm as LayerNorm
from blox.nn._normalization import RMSNorm as RMSNorm
from blox.nn._pooling import avg_pool as avg_pool
from blox.nn._pooling import max_pool as max_pool
from blox.nn._pooling import min_pool as min_pool
from blox.nn._rng import Rng as Rng
from blox.nn._rope import RopeScaling as RopeScaling
from blox.nn._rope import rope as rope
from blox.nn._rope import rope_frequencies as rope_frequencies
from blox.nn._sequential import Sequential as Sequential
from blox.nn._soft_cap import soft_cap as soft_cap
from blox.nn._version import __version__ as __version__

__all__ = [
    "BatchNorm",
    "Contraction",
    "ContractionHook",
    "Conv",
    "ConvDimensions",
    "ConvTranspose",
    "Dropout",
    "Embed",
    "GRU",
    "GRUState",
    "GatedMLP",
    "KVCache",
    "LSTM",
    "LSTMState",
    "LayerNorm",
    "Linear",
    "MLP",
    "MultiHeadAttention",
    "RMSNorm",
    "Rng",
    "RopeScaling",
    "Sequential",
    "__version__",
    "avg_pool",
    "causal_mask",
    "combine_masks",
    "contract",
    "contraction_hooks",
    "dot_product_attention",
    "initializers",
    "max_pool",
    "min_pool",
    "padding_mask",
    "rope",
    "rope_frequencies",
    "set_contraction_hook",
    "soft_cap",
    "softmax_cross_entropy",
]
