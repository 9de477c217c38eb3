"""The key-source protocol: what creating a param with random values draws from.

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

__all__ = ["KeySource"]


@runtime_checkable
class KeySource(Protocol):
  """Something that takes params and returns `(key, new_params)`.

  `Params.get_or_create(..., rng=source)` draws exactly one key from it for
  each param it creates; the returned params carry the source's new state.

  Example:
    >>> import jax
    >>> from blox.params import Params
    >>> key, params = (lambda params: (jax.random.key(0), params))(Params())
    >>> key.shape
    ()
  """

  def __call__(self, params: Params, /) -> tuple[Any, Params]: ...
