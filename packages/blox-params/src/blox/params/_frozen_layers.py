"""Frozen layers of stacked params: zero gradients, and values put back bit for bit.

A param stacked for a layer stack (`blox.graph.Repeat`: metadata `STACKED:
(num_layers, ...)`, a leading layer axis) has one trainable flag for all its
layers. `Params.freeze(where, layers=[...])` records the frozen layers in
its metadata under `FROZEN_LAYERS`; this module acts on that record:

- `zero_frozen_layers(grads)`: the gradients with those layers set to zero
  (`value_and_grad` applies it), so optimizer moments do not pick them up;
- `restore_frozen_layers(updated, original)`: the updated params with those
  layers' values taken from the original, by selection (`jnp.where`).

Why select rather than rely on zero gradients: an optimizer moves a param
whose gradient is zero (AdamW's weight decay subtracts `lr * wd * value`),
and even adding a zero update is not bit-identical (`-0.0 + 0.0` is `+0.0`).

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import FROZEN_LAYERS, STACKED, Param, Params
  >>> old = Params({('w',): Param(jnp.ones((3, 2)),
  ...                            metadata={STACKED: (3,), FROZEN_LAYERS: (0,)})})
  >>> new = old.map(lambda path, param: param.value * 0.5)
  >>> restore_frozen_layers(new, old)[('w',)].value.tolist()
  [[1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from blox.params._container import Params
from blox.params._freezing import frozen_layers, stack_size
from blox.params._measure import describe_value
from blox.params._metadata import FROZEN_LAYERS, STACKED, Metadata
from blox.params._param import Param
from blox.params._paths import Path, path_text

__all__ = ["layer_mask", "restore_frozen_layers", "zero_frozen_layers"]


def layer_mask(path: Path, value: Any, metadata: Mapping[str, Any]) -> np.ndarray:
  """A bool mask, True on the frozen layers that `metadata` records, shaped
  to broadcast against `value` (`(num_layers, 1, ..., 1)`).

  Raises:
    ValueError: the param is not stacked (no `STACKED` metadata whose
      outermost size is `value`'s leading axis), or lists a layer past it.
      A per-layer param that kept its stack's record must not have its own
      first axis taken for layers.

  Example:
    >>> import numpy as np
    >>> layer_mask(('w',), np.zeros((3, 2)), {'stacked': (3,), 'frozen_layers': (1,)}).tolist()
    [[False], [True], [False]]
  """
  layers = frozen_layers(metadata)
  shape = tuple(getattr(value, "shape", ()))
  size = stack_size(metadata)
  if not size or not shape or shape[0] != size or any(not 0 <= i < size for i in layers):
    raise ValueError(
        f"Param {path_text(path)} holds {describe_value(value)} with the"
        f" metadata {dict(metadata)!r}: its {FROZEN_LAYERS!r} entry lists the"
        f" layers {layers}, which index the leading axis of a stacked param"
        f" (one whose {STACKED!r} metadata starts with that axis's size). Set"
        " frozen layers with params.freeze(where, layers=...) on the stacked"
        f" params, and drop the {FROZEN_LAYERS!r} entry from params that are"
        " not stacked."
    )
  mask = np.zeros(size, dtype=bool)
  mask[list(layers)] = True
  return mask.reshape((size,) + (1,) * (len(shape) - 1))


def zero_frozen_layers(grads: Params) -> Params:
  """`grads` with the frozen layers (by each entry's metadata) set to zero.

  Entries without frozen layers keep their very value objects.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import FROZEN_LAYERS, Param, Params
    >>> from blox.params import STACKED
    >>> grads = Params({('w',): Param(jnp.ones(3), metadata={STACKED: (3,), FROZEN_LAYERS: (2,)})})
    >>> zero_frozen_layers(grads)[('w',)].value.tolist()
    [1.0, 1.0, 0.0]
  """
  def zeroed(path: Path, grad: Any, metadata: Metadata) -> Any:
    return jnp.where(layer_mask(path, grad, metadata), jnp.zeros_like(grad), grad)

  return _with_layers(grads, zeroed)


def restore_frozen_layers(updated: Params, original: Params) -> Params:
  """`updated` with the values of its frozen layers taken from `original`, bit for bit.

  Call it after the optimizer step: `optax.apply_updates` moves frozen layers
  too (weight decay does not need a gradient), and this selects (never adds)
  each frozen layer's original values back. The frozen layers are those that
  `updated`'s metadata lists under `FROZEN_LAYERS` (see `Params.freeze`);
  every other value of `updated` is returned as it is, the very same object,
  and so are its structure, flags and order. Works under `jax.jit`.

  Args:
    updated: the params after the optimizer step (or any params holding new
      values; e.g. the trainable half).
    original: the params before the step; it must hold every path that has
      frozen layers, with the same shape and dtype.

  Raises:
    TypeError: either argument is not `Params`.
    ValueError: `original` lacks a path with frozen layers or holds another
      shape or dtype there (the message names the path).

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import STACKED, Param, Params, restore_frozen_layers
    >>> params = Params({('stack', 'w'): Param(-jnp.zeros((2, 2)), metadata={STACKED: (2,)})})
    >>> params = params.freeze('stack/w', layers=[0])
    >>> stepped = params.map(lambda path, param: param.value + 0.0 - 0.5)
    >>> restore_frozen_layers(stepped, params)[('stack', 'w')].value.tolist()
    [[-0.0, -0.0], [-0.5, -0.5]]
  """
  for name, given in (("updated", updated), ("original", original)):
    if not isinstance(given, Params):
      raise TypeError(
          f"restore_frozen_layers: {name} must be Params, got {type(given).__name__}."
      )
  index = original._structure.index()

  def restored(path: Path, value: Any, metadata: Metadata) -> Any:
    position = index.get(path)
    if position is None:
      raise ValueError(
          f"restore_frozen_layers: param {path_text(path)} has frozen layers"
          f" {frozen_layers(metadata)}, but original holds no such path; pass"
          " the params from before the optimizer step (the same half of the"
          " split)."
      )
    before = original._values[position]
    if tuple(before.shape) != tuple(value.shape) or before.dtype != value.dtype:
      raise ValueError(
          f"restore_frozen_layers: param {path_text(path)} is"
          f" {describe_value(value)} in updated but {describe_value(before)} in"
          " original; pass the params from before the optimizer step."
      )
    return jnp.where(layer_mask(path, value, metadata), before, value)

  return _with_layers(updated, restored)


def _with_layers(params: Params, change: Callable[[Path, Any, Metadata], Any]) -> Params:
  """`params` with `change(path, value, metadata)` as the value of every entry
  that has frozen layers; the structure and all other values kept."""
  s = params._structure
  if not any(FROZEN_LAYERS in metadata for metadata in s.metadata):
    return params  # nothing frozen by layer: the very same params

  def value_of(path: Path, param: Param) -> Any:
    if not frozen_layers(param.metadata):
      return param.value
    return change(path, param.value, param.metadata)

  return params.map(value_of)
