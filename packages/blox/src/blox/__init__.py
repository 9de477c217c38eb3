"""blox: functional neural networks for JAX with explicit state.

`outputs, params = module(params, inputs)`: all state lives in an immutable
`Params` container that is passed in and returned.

`import blox as bx` loads no portion yet: each name imports the portion that
defines it (blox.params, blox.graph, blox.nn, blox.parallel) on first use, so
`import blox.params` alone never loads the layers.

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
# Spelt exactly so, documentation tools (griffe) also see a namespace package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

import importlib as _importlib  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from blox._version import __version__ as __version__  # noqa: E402

# Each public name and the portion that defines it; a name that is itself a
# portion (`parallel`) stands for that portion.
_EXPORTS: dict[str, str] = {
    # blox.params
    "CheckpointError": "blox.params",
    "CheckpointWarning": "blox.params",
    "Initializer": "blox.params",
    "KeySource": "blox.params",
    "Metadata": "blox.params",
    "Param": "blox.params",
    "Params": "blox.params",
    "Path": "blox.params",
    "FROZEN_LAYERS": "blox.params",
    "SHARDING": "blox.params",
    "STACKED": "blox.params",
    "load": "blox.params",
    "param_mask": "blox.params",
    "restore_frozen_layers": "blox.params",
    "save": "blox.params",
    "unused_params": "blox.params",
    "value_and_grad": "blox.params",
    # blox.graph
    "Graph": "blox.graph",
    "Module": "blox.graph",
    "Repeat": "blox.graph",
    "capture": "blox.graph",
    "Policy": "blox.graph",
    "RecurrenceBase": "blox.graph",
    "SequenceBase": "blox.graph",
    "dynamic_scan": "blox.graph",
    "maybe_reset_state": "blox.graph",
    "static_scan": "blox.graph",
    "summary": "blox.graph",
    "setting": "blox.graph",
    "tabulate": "blox.graph",
    # blox.nn
    "BatchNorm": "blox.nn",
    "Conv": "blox.nn",
    "ConvTranspose": "blox.nn",
    "Dropout": "blox.nn",
    "Embed": "blox.nn",
    "GRU": "blox.nn",
    "GRUState": "blox.nn",
    "GatedMLP": "blox.nn",
    "KVCache": "blox.nn",
    "LSTM": "blox.nn",
    "LSTMState": "blox.nn",
    "LayerNorm": "blox.nn",
    "Linear": "blox.nn",
    "MLP": "blox.nn",
    "MultiHeadAttention": "blox.nn",
    "RMSNorm": "blox.nn",
    "Rng": "blox.nn",
    "RopeScaling": "blox.nn",
    "Sequential": "blox.nn",
    "avg_pool": "blox.nn",
    "causal_mask": "blox.nn",
    "combine_masks": "blox.nn",
    "Contraction": "blox.nn",
    "contract": "blox.nn",
    "contraction_hooks": "blox.nn",
    "dot_product_attention": "blox.nn",
    "initializers": "blox.nn",
    "max_pool": "blox.nn",
    "min_pool": "blox.nn",
    "padding_mask": "blox.nn",
    "rope": "blox.nn",
    "rope_frequencies": "blox.nn",
    "set_contraction_hook": "blox.nn",
    "soft_cap": "blox.nn",
    "softmax_cross_entropy": "blox.nn",
    # blox.parallel, as a whole
    "parallel": "blox.parallel",
    # blox.models: its own distribution (blox-models), not a dependency of
    # this umbrella (it brings safetensors); `bx.models` when installed.
    "models": "blox.models",
}

__all__ = sorted(["__version__", *_EXPORTS])

if TYPE_CHECKING:
  # What the lazy names are, for type checkers and IDEs; at runtime
  # `__getattr__` below imports them on first use.
  from blox import models as models
  from blox import parallel as parallel
  from blox.graph import Graph as Graph
  from blox.graph import Module as Module
  from blox.graph import Repeat as Repeat
  from blox.graph import capture as capture
  from blox.graph import Policy as Policy
  from blox.graph import RecurrenceBase as RecurrenceBase
  from blox.graph import SequenceBase as SequenceBase
  from blox.graph import dynamic_scan as dynamic_scan
  from blox.graph import maybe_reset_state as maybe_reset_state
  from blox.graph import setting as setting
  from blox.graph import static_scan as static_scan
  from blox.graph import summary as summary
  from blox.graph import tabulate as tabulate
  from blox.nn import GRU as GRU
  from blox.nn import LSTM as LSTM
  from blox.nn import BatchNorm as BatchNorm
  from blox.nn import Conv as Conv
  from blox.nn import ConvTranspose as ConvTranspose
  from blox.nn import Dropout as Dropout
  from blox.nn import Embed as Embed
  from blox.nn import GatedMLP as GatedMLP
  from blox.nn import GRUState as GRUState
  from blox.nn import KVCache as KVCache
  from blox.nn import LayerNorm as LayerNorm
  from blox.nn import Linear as Linear
  from blox.nn import LSTMState as LSTMState
  from blox.nn import MLP as MLP
  from blox.nn import MultiHeadAttention as MultiHeadAttention
  from blox.nn import RMSNorm as RMSNorm
  from blox.nn import Rng as Rng
  from blox.nn import RopeScaling as RopeScaling
  from blox.nn import Sequential as Sequential
  from blox.nn import avg_pool as avg_pool
  from blox.nn import causal_mask as causal_mask
  from blox.nn import combine_masks as combine_masks
  from blox.nn import Contraction as Contraction
  from blox.nn import contract as contract
  from blox.nn import contraction_hooks as contraction_hooks
  from blox.nn import dot_product_attention as dot_product_attention
  from blox.nn import initializers as initializers
  from blox.nn import max_pool as max_pool
  from blox.nn import min_pool as min_pool
  from blox.nn import padding_mask as padding_mask
  from blox.nn import rope as rope
  from blox.nn import rope_frequencies as rope_frequencies
  from blox.nn import set_contraction_hook as set_contraction_hook
  from blox.nn import soft_cap as soft_cap
  from blox.nn import softmax_cross_entropy as softmax_cross_entropy
  from blox.params import SHARDING as SHARDING
  from blox.params import STACKED as STACKED
  from blox.params import FROZEN_LAYERS as FROZEN_LAYERS
  from blox.params import CheckpointError as CheckpointError
  from blox.params import CheckpointWarning as CheckpointWarning
  from blox.params import Initializer as Initializer
  from blox.params import KeySource as KeySource
  from blox.params import Metadata as Metadata
  from blox.params import Param as Param
  from blox.params import Params as Params
  from blox.params import Path as Path
  from blox.params import load as load
  from blox.params import param_mask as param_mask
  from blox.params import restore_frozen_layers as restore_frozen_layers
  from blox.params import save as save
  from blox.params import unused_params as unused_params
  from blox.params import value_and_grad as value_and_grad
else:
  # Hidden from type checkers, so that a misspelt `bx.Lineer` stays a type
  # error instead of becoming `Any`.

  def __getattr__(name: str) -> object:
    """Imports the portion that defines `name` on first use (PEP 562)."""
    portion = _EXPORTS.get(name)
    if portion is None:
      raise AttributeError(
          f"module 'blox' has no attribute {name!r}; the public names are listed"
          " in blox.__all__ (or import the portion directly, e.g. blox.nn)."
      )
    try:
      module = _importlib.import_module(portion)
    except ModuleNotFoundError as error:
      if error.name != portion:
        raise
      raise ImportError(
          f"blox.{name} comes with the {portion.replace('.', '-')} distribution, which is"
          f" not installed: pip install {portion.replace('.', '-')}."
      ) from error
    value = module if portion == f"{__name__}.{name}" else getattr(module, name)
    # Later lookups find the name directly, without calling this again.
    globals()[name] = value
    return value

  def __dir__() -> list[str]:
    return list(__all__)
