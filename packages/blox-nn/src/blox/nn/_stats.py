"""Helpers shared by the normalisation layers (`LayerNorm`, `RMSNorm`, `BatchNorm`).

Example:
  >>> import jax.numpy as jnp
  >>> compute_dtypes(jnp.bfloat16)
  (dtype('float32'), dtype(bfloat16))
  >>> from blox.nn._precision import Dtypes
  >>> compute_dtypes(jnp.float32, Dtypes(None, jnp.dtype(jnp.bfloat16), None))
  (dtype('float32'), dtype(bfloat16))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._precision import Dtypes

__all__ = ["check_epsilon", "compute_dtypes", "pmean"]

# jax.lax.pmean has no annotations; calling it through this typed name keeps
# mypy's strict untyped-call check on everywhere else.
_pmean: Callable[[jax.Array, Hashable], jax.Array] = jax.lax.pmean


def pmean(x: jax.Array, axis_name: Hashable, where: str) -> jax.Array:
  """`jax.lax.pmean(x, axis_name)`, with an error naming the layer when the
  axis is not bound (the layer was called outside `vmap`/`shard_map`)."""
  try:
    return _explicit_safe_pmean(x, axis_name)
  except NameError as error:
    raise NameError(
        f"{where}: axis_name={axis_name!r} is not bound here ({error}). A layer"
        " with an axis_name averages its statistics across that named axis, so"
        " call it inside jax.vmap(..., axis_name=...) or jax.shard_map over a"
        f" mesh with the axis {axis_name!r}; or make it with axis_name=None."
    ) from error


def _explicit_safe_pmean(x: jax.Array, axis_name: Hashable) -> jax.Array:
  """`jax.lax.pmean`, also over a `vmap` axis whose lanes are split over
  Explicit mesh axes.

  JAX 0.10's batching rule of `psum` over a vmapped batch that is sharded in
  its type fails an internal assertion (`AssertionError: (1, P('data', ...))`).
  Inside `jax.sharding.auto_axes` the mesh axes are Auto, where the same
  reduction compiles, and the result gets the lane's own sharding back. An
  axis of the mesh itself (a `shard_map` axis) needs no such detour.
  """
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if (
      not isinstance(mesh, jax.sharding.AbstractMesh) or mesh.empty
      or not mesh.explicit_axes or axis_name in mesh.axis_names
  ):
    return _pmean(x, axis_name)
  # The lane's mesh is set for the detour: `jit` without `jax.set_mesh`
  # knows it only from the arrays' types.
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.sharding.auto_axes(  # type: ignore[no-any-return]  # untyped in jax
        lambda lane: _pmean(lane, axis_name), out_sharding=sharding.spec
    )(x)


def compute_dtypes(dtype: Any, dtypes: Dtypes | None = None) -> tuple[Any, Any]:
  """`(statistics dtype, output dtype)` for normalising inputs of `dtype`.

  The whole normalisation (statistics, scale and bias) runs in at least
  float32, whatever the compute dtype: that keeps the mean of squares of
  bfloat16 or float16 inputs from losing most of its precision (or
  overflowing). The outputs take the layer's output dtype, else its compute
  dtype (`dtypes`), else the dtype of the (floating-point) inputs.
  """
  statistics, output = jnp.promote_types(dtype, jnp.float32), jnp.dtype(dtype)
  if dtypes is not None and dtypes.compute is not None:
    statistics = jnp.promote_types(statistics, dtypes.compute)
    output = dtypes.compute
  if dtypes is not None and dtypes.output is not None:
    output = dtypes.output
  return statistics, output


def check_epsilon(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is a non-negative number (a setting's check)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
    raise ValueError(f"{where}: {name} must be a non-negative number, got {value!r}.")
  return value
