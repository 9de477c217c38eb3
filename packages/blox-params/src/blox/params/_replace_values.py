"""`Params.replace_values`: values from other params, in these params' order.

Loading part of a model from elsewhere (a pretrained backbone, converted
weights, a fine-tuned head) means taking some values from another `Params`
while keeping this container's structure: its order, ranks, trainable flags,
metadata and lock state, so that compiled functions and optimizer states
made for it still fit. `merge` cannot do that: its "other wins" takes the
other's flags and metadata, and it adds the other's extra paths.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('a',): Param(jnp.zeros(1)), ('b',): Param(jnp.zeros(1), trainable=False)})
  >>> other = Params({('b',): Param(jnp.ones(1))})
  >>> new = replace_values(params, other)
  >>> [(path, p.value.tolist(), p.trainable) for path, p in new.items()]
  [(('a',), [0.0], True), (('b',), [1.0], False)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blox.params._dtypes import same_dtype
from blox.params._measure import describe_value
from blox.params._param import Param
from blox.params._paths import Path, closest_hint, path_text

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["replace_values"]


def replace_values(params: Params, other: Params) -> Params:
  """Returns these params with the value of every path of `other` taken from it.

  Only values change: the result has these params' paths in their order, and
  their ranks, trainable flags, metadata and locked flag (so the same tree
  structure); `other`'s flags, metadata and order are ignored. Paths that
  `other` lacks keep their values (the very same objects). Works under
  `jax.jit`, and with abstract values.

  Args:
    other: `Params` whose paths all exist here, each value of the same shape
      and dtype as the one it replaces.

  Raises:
    TypeError: `other` is not `Params`.
    ValueError: `other` holds paths these params lack, or values of another
      shape or dtype; one message lists every such path.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> params = Params({('w',): Param(jnp.zeros(2)), ('b',): Param(jnp.zeros(1))})
    >>> params.replace_values(Params({('w',): Param(jnp.ones(2))}))[('w',)].value
    Array([1., 1.], dtype=float32)
  """
  if not isinstance(other, type(params)):
    raise TypeError(
        f"replace_values takes Params, got {type(other).__name__}; wrap the"
        " values as Params({path: Param(value), ...})."
    )
  index = params._structure.index()
  known = params._structure.paths
  problems = []
  replacements: dict[Path, Any] = {}
  for path, value in zip(other._structure.paths, other._values):
    position = index.get(path)
    if position is None:
      problems.append(f"  {path_text(path)} is not in these params.{closest_hint(path, known)}")
      continue
    old = params._values[position]
    if tuple(getattr(value, "shape", ())) != tuple(old.shape) or not same_dtype(
        getattr(value, "dtype", None), old.dtype
    ):
      problems.append(
          f"  {path_text(path)}: these params hold {describe_value(old)}, the"
          f" other {describe_value(value)}"
      )
      continue
    replacements[path] = value
  if problems:
    raise ValueError(
        f"replace_values: {len(problems)} of the other params' paths cannot"
        " replace a value here (values keep their path, shape and dtype):\n"
        + "\n".join(problems)
        + "\nSelect the matching params first (other.split(...)), or convert"
        " the values (params.astype, reshape) before replacing."
    )

  def value_of(path: Path, param: Param) -> Any:
    return replacements.get(path, param.value)

  return params.map(value_of) if replacements else params
