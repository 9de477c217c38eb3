"""The key-source protocol, and the metadata tags that mark random streams.

blox-params knows nothing of layers; when a param is created with random
initial values it only needs "something that hands out a key". Any object
with this call signature qualifies, such as `blox.nn.Rng`.

Example:
  >>> import jax
  >>> class FixedKey:
  ...   def __call__(self, params):
  ...     return jax.random.key(0), params
  >>> isinstance(FixedKey(), KeySource)
  True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["KeySource", "RNG_STREAM", "RNG_SEED", "RNG_COUNTER"]

# Tools (per-lane folding, checkpoints, summaries) find every random stream in
# a Params by these tags, without the modules that made them.
RNG_STREAM = "rng_stream"
"""The metadata key that marks a param as random-stream state.

A random stream stores its state as params whose metadata maps `RNG_STREAM`
to `RNG_SEED` or `RNG_COUNTER`.
"""
RNG_SEED = "seed"
"""The `RNG_STREAM` tag of a stream's seed param (a PRNG key)."""
RNG_COUNTER = "counter"
"""The `RNG_STREAM` tag of a stream's counter param (a uint32 scalar)."""


@runtime_checkable
class KeySource(Protocol):
  """Something that takes params and returns `(key, new_params)`."""

  def __call__(self, params: Params, /) -> tuple[Any, Params]: ...
