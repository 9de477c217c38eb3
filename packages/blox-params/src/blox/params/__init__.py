"""blox.params: an immutable, pytree-native container for model state.

Depends on jax and numpy only, so any JAX code can use it. This module is
the whole public API; the implementation lives in private modules
(`blox/params/_*.py`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('w',): Param(jnp.ones(3))}).locked()
  >>> jax.tree.map(lambda x: 2 * x, params)[('w',)].value
  Array([2., 2., 2.], dtype=float32)
"""

from blox.params._array_kinds import is_array as is_array
from blox.params._array_kinds import is_prng_key as is_prng_key
from blox.params._checkpoint_format import CheckpointError as CheckpointError
from blox.params._checkpoint_load import load as load
from blox.params._checkpoint_read import CheckpointWarning as CheckpointWarning
from blox.params._checkpoint_save import save as save
from blox.params._container import Params as Params
from blox.params._frozen_layers import restore_frozen_layers as restore_frozen_layers
from blox.params._initializer import Initializer as Initializer
from blox.params._key_source import KeySource as KeySource
from blox.params._measure import measure as measure
from blox.params._metadata import FROZEN_LAYERS as FROZEN_LAYERS
from blox.params._metadata import RNG_COUNTER as RNG_COUNTER
from blox.params._metadata import RNG_SEED as RNG_SEED
from blox.params._metadata import RNG_STREAM as RNG_STREAM
from blox.params._metadata import SHARDING as SHARDING
from blox.params._metadata import STACKED as STACKED
from blox.params._metadata import Metadata as Metadata
from blox.params._param import Param as Param
from blox.params._paths import Path as Path
from blox.params._placement import Placement as Placement
from blox.params._placement import placing as placing
from blox.params._paths import path_text as path_text
from blox.params._split_arrays import split_arrays as split_arrays
from blox.params._training import param_mask as param_mask
from blox.params._training import value_and_grad as value_and_grad
from blox.params._unused import ReadRecorder as ReadRecorder
from blox.params._unused import recording_reads as recording_reads
from blox.params._unused import unused_params as unused_params
from blox.params._version import __version__ as __version__

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "FROZEN_LAYERS",
    "Initializer",
    "KeySource",
    "Metadata",
    "Param",
    "Params",
    "Path",
    "Placement",
    "ReadRecorder",
    "RNG_COUNTER",
    "RNG_SEED",
    "RNG_STREAM",
    "SHARDING",
    "STACKED",
    "__version__",
    "is_array",
    "is_prng_key",
    "load",
    "measure",
    "param_mask",
    "path_text",
    "placing",
    "recording_reads",
    "restore_frozen_layers",
    "save",
    "split_arrays",
    "unused_params",
    "value_and_grad",
]
