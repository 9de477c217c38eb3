"""blox.params: an immutable, pytree-native container for model state.

Depends on jax and numpy only, so any JAX code can use it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('w',): Param(jnp.ones(3))}).locked()
  >>> jax.tree.map(lambda x: 2 * x, params)[('w',)].value
  Array([2., 2., 2.], dtype=float32)
"""

from blox.params._arrays import Initializer, is_array, is_prng_key
from blox.params._paths import SHARDING, path_text
from blox.params.checkpoint import CheckpointWarning, load, save
from blox.params.checkpoint_format import CheckpointError
from blox.params.key_source import RNG_COUNTER, RNG_SEED, RNG_STREAM, KeySource
from blox.params.param import Metadata, Param
from blox.params.params import Params, Path
from blox.params.training import param_mask, value_and_grad

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "Initializer",
    "KeySource",
    "Metadata",
    "Param",
    "Params",
    "Path",
    "RNG_COUNTER",
    "RNG_SEED",
    "RNG_STREAM",
    "SHARDING",
    "is_array",
    "is_prng_key",
    "load",
    "param_mask",
    "path_text",
    "save",
    "value_and_grad",
]
