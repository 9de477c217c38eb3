"""Mixed precision for the layers: which dtypes a layer creates, computes and outputs in.

Every layer that creates params takes `param_dtype=None` and `dtype=None`.
`resolve_dtypes` combines them with the module's effective `Policy`
(`Module.policy()`) into `Dtypes`:

- `param`: the argument, else the policy's `param_dtype`, else None, which
  creates params in float32 and accepts existing params of any dtype (a set
  dtype is also checked against existing params).
- `compute`: the argument, else the policy's `compute_dtype`, else None,
  which computes in the inputs' dtype promoted with the params'.
- `output`: the policy's `output_dtype`, else None: outputs stay in the
  compute dtype.

`to_compute` casts a layer's operands to the compute dtype (or promotes them
together) and `to_output` casts its result. `float32_init` makes params of a
16-bit `param_dtype` by initialising in float32 and rounding: some
initializers (`orthogonal`'s QR) have no 16-bit kernels, and this way a
bfloat16 param is the float32 one, rounded.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph, Module, Policy
  >>> class Plain(Module):
  ...   def __call__(self, params, x):
  ...     return x, params
  >>> net = Graph('net', policy=Policy(compute_dtype=jnp.bfloat16))
  >>> dtypes = resolve_dtypes(Plain(net.child('plain')), None, None)
  >>> dtypes
  Dtypes(param=None, compute=dtype(bfloat16), output=None)
  >>> x, w = to_compute(dtypes, jnp.ones(2), jnp.ones(2))
  >>> x.dtype, to_output(dtypes, x * w).dtype
  (dtype(bfloat16), dtype(bfloat16))
  >>> check_dtype('int32', 'dtype', "Linear 'net/out'")
  Traceback (most recent call last):
  ...
  TypeError: Linear 'net/out': dtype must be a floating dtype such as jnp.bfloat16 (or None), got int32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.params import Initializer

__all__ = [
    "Dtypes",
    "check_dtype",
    "float32_init",
    "resolve_dtypes",
    "to_compute",
    "to_output",
]


class Dtypes(NamedTuple):
  """The dtypes one call of a layer uses; None fields follow the defaults above."""

  param: Any
  compute: Any
  output: Any


def check_dtype(value: Any, name: str, where: str) -> Any:
  """`value` as a floating `jnp.dtype`, or None; raises TypeError naming the layer.

  Layers check their `param_dtype` and `dtype` arguments in the constructor,
  so that a typo shows where the layer is made rather than on its first call.
  """
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    shown = repr(value) if dtype is None else str(dtype)
    raise TypeError(
        f"{where}: {name} must be a floating dtype such as jnp.bfloat16 (or None),"
        f" got {shown}."
    )
  return dtype


def resolve_dtypes(module: Module, param_dtype: Any, dtype: Any) -> Dtypes:
  """The `Dtypes` of `module`, from its own `param_dtype` and `dtype`
  arguments (which win) and its effective policy."""
  policy = module.policy()
  return Dtypes(
      param=policy.param_dtype if param_dtype is None else param_dtype,
      compute=policy.compute_dtype if dtype is None else dtype,
      output=policy.output_dtype,
  )


def to_compute(dtypes: Dtypes, *arrays: Any) -> list[Any]:
  """`arrays` cast to the compute dtype; without one, to their promoted dtype.

  None entries (a missing bias) stay None.
  """
  present = [a for a in arrays if a is not None]
  target = dtypes.compute if dtypes.compute is not None else jnp.result_type(*present)
  return [None if a is None else jnp.asarray(a).astype(target) for a in arrays]


def to_output(dtypes: Dtypes, outputs: jax.Array) -> jax.Array:
  """`outputs` cast to the output dtype when one is set, else unchanged."""
  return outputs if dtypes.output is None else outputs.astype(dtypes.output)


def float32_init(init: Initializer, param_dtype: Any) -> Initializer:
  """`init`, run in float32 and rounded when `param_dtype` is a float narrower
  than 32 bits; `init` itself otherwise.

  Example:
    >>> import jax
    >>> from blox.nn.initializers import orthogonal
    >>> init = float32_init(orthogonal(), jnp.bfloat16)
    >>> init(jax.random.key(0), (3, 3), jnp.bfloat16).dtype
    dtype(bfloat16)
  """
  if param_dtype is None or jnp.dtype(param_dtype).itemsize >= 4:
    return init

  def rounded(key: Any, shape: Any, dtype: Any = param_dtype, out_sharding: Any = None) -> Any:
    # A placement (blox.params' `placing`) passes out_sharding; it reaches
    # `init` only when given, so an init function without it still works.
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    return jnp.asarray(init(key, shape, jnp.float32, **extra)).astype(dtype)

  return rounded
