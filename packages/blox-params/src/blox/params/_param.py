"""`Param`: one value with its trainable flag and metadata.

`Param` is the user-facing view of a single entry of `Params`. The container
itself stores values in a tuple and flags and metadata in its structure; a
`Param` is built on access and taken apart on insertion.

Example:
  >>> import jax.numpy as jnp
  >>> p = Param(jnp.zeros((2, 3)), metadata={'sharding': (None, 'model')})
  >>> p.sharding
  (None, 'model')
  >>> p.replace(trainable=False)
  Param(float32[2, 3], trainable=False, metadata={'sharding': (None, 'model')})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blox.params._array_kinds import is_value
from blox.params._measure import describe_value
from blox.params._metadata import SHARDING, Metadata, as_metadata
from blox.params._paths import Path, check_path, path_text

__all__ = ["Param", "check_param", "check_replacement"]


class Param:
  """A parameter value with its trainable flag and metadata.

  Args:
    value: an array (or an abstract `jax.ShapeDtypeStruct`).
    trainable: whether `Params.split()` puts it with the gradient-receiving
      half. Must be a `bool`.
    metadata: a mapping of hashable values, e.g. `{'sharding': ('data',)}`.
  """

  __slots__ = ("value", "trainable", "metadata")

  value: Any
  trainable: bool
  metadata: Metadata

  def __init__(
      self,
      value: Any,
      trainable: bool = True,
      metadata: Mapping[str, Any] | None = None,
  ) -> None:
    if not isinstance(trainable, bool):
      raise TypeError(
          f"trainable must be a bool, got {type(trainable).__name__}."
      )
    object.__setattr__(self, "value", value)
    object.__setattr__(self, "trainable", trainable)
    object.__setattr__(self, "metadata", as_metadata(metadata))

  def __setattr__(self, name: str, value: object) -> None:
    raise AttributeError("Param is immutable; use replace(...) instead.")

  def __reduce__(self) -> tuple[Any, ...]:
    # For copy, deepcopy and pickle (`__setattr__` refuses the default route).
    return (Param, (self.value, self.trainable, self.metadata))

  @property
  def sharding(self) -> tuple[Any, ...]:
    """The `'sharding'` metadata entry (mesh axis names per dim), or `()`."""
    spec = self.metadata.get(SHARDING, ())
    return tuple(spec) if isinstance(spec, tuple) else (spec,)

  def replace(self, **changes: Any) -> Param:
    """Returns a copy with the given fields (value, trainable, metadata) changed."""
    unknown = set(changes) - {"value", "trainable", "metadata"}
    if unknown:
      raise TypeError(f"Param has no fields {sorted(unknown)}.")
    return Param(
        changes.get("value", self.value),
        changes.get("trainable", self.trainable),
        changes.get("metadata", self.metadata),
    )

  def __eq__(self, other: object) -> bool:
    # Compares structure and identity of the value: array equality is
    # elementwise in JAX and has no single truth value.
    if not isinstance(other, Param):
      return NotImplemented
    return (
        self.value is other.value
        and self.trainable == other.trainable
        and self.metadata == other.metadata
    )

  __hash__ = None  # type: ignore[assignment]  # values are arrays: not hashable

  def __repr__(self) -> str:
    parts = [describe_value(self.value)]
    if not self.trainable:
      parts.append("trainable=False")
    if self.metadata:
      parts.append(f"metadata={dict(self.metadata)!r}")
    return f"Param({', '.join(parts)})"


def check_param(path: object, param: object) -> None:
  """Raises TypeError unless `param` is a `Param` with an array value.

  Used where users put `Param`s in (the constructor, `params[path] = ...`),
  never in `build`: JAX rebuilds `Params` with None, masks, shardings or
  optimizer placeholders as leaves, and those must pass through.
  """
  where = path_text(check_path(path))
  if not isinstance(param, Param):
    raise TypeError(
        f"Params holds Param objects, but {where} is {type(param).__name__}:"
        f" params[{where}] must be set to a Param; wrap the value as Param(value)."
    )
  if not is_value(param.value):
    raise TypeError(
        f"The value of param {where} must be an array (jax or numpy"
        f" array, numpy scalar or jax.ShapeDtypeStruct), got"
        f" {type(param.value).__name__}; wrap it with jnp.asarray(...). A param"
        " holds exactly one array."
    )


def check_replacement(path: Path, old: Any, value: object) -> None:
  """Raises unless `value` can replace `old` as the value of the param at `path`:
  an array (TypeError otherwise) of the same shape and dtype (ValueError)."""
  if not is_value(value):
    raise TypeError(
        f"The value for {path_text(path)} must be an array, got"
        f" {type(value).__name__}; wrap it with jnp.asarray(...)."
    )
  if tuple(value.shape) != tuple(old.shape) or value.dtype != old.dtype:  # type: ignore[attr-defined]  # is_value: an array
    raise ValueError(
        f"Param {path_text(path)} holds {describe_value(old)}; cannot set a"
        f" value of {describe_value(value)}. Create a new param for a new shape"
        " or dtype."
    )
