"""`constrain`: a sharding constraint on an activation, in logical axis names.

The same rules that place params (`param_shardings(params, mesh, rules)`)
place activations: `constrain(x, ('batch', 'mlp'), mesh, rules)` asks XLA to
lay `x` out as the rules map those names, through
`jax.lax.with_sharding_constraint`. Under `jax.jit` this guides the
partitioner; outside it, `x` is moved to that sharding. The mesh's axes must
be Auto axes, as `blox.parallel.make_mesh` makes them (JAX refuses sharding
constraints on Explicit axes: use `jax.sharding.reshard` there).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.parallel import make_mesh
  >>> mesh = make_mesh((1, 1), ('data', 'model'))
  >>> rules = (('batch', 'data'), ('mlp', 'model'))
  >>> constrain(jnp.ones((4, 2)), ('batch', 'mlp'), mesh, rules).sharding.spec
  P('data', 'model')
  >>> y = jax.jit(lambda x: constrain(x * 2, ('batch', 'mlp'), mesh, rules))(jnp.ones((4, 2)))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from blox.parallel._rules import Rules, resolve
from blox.parallel._util import spec

__all__ = ["constrain"]

# with_sharding_constraint has no annotations; calling it through this typed
# name keeps mypy's strict untyped-call check on everywhere else.
_with_sharding_constraint: Callable[[jax.Array, NamedSharding], jax.Array] = (
    jax.lax.with_sharding_constraint
)


def constrain(
    x: jax.Array, logical_axes: tuple[Any, ...], mesh: Mesh, rules: Rules | None = None
) -> jax.Array:
  """`x` constrained to the sharding that `logical_axes` map to through `rules`.

  Args:
    x: an array (traced or concrete).
    logical_axes: one entry per leading dim of `x`: a logical axis name, a
      mesh axis name, a tuple of names, or None (not sharded); missing
      entries at the end mean None.
    mesh: the mesh to lay `x` out on.
    rules: `(logical_name, mesh_axes)` pairs, as for `param_shardings`;
      first rule wins, None replicates, a mesh axis name without a rule is
      taken as is.

  Returns:
    `jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))`.

  Raises:
    ValueError: `logical_axes` is not a tuple or has more entries than `x`
      has dims, or see `blox.parallel.partition_spec` (unknown names, bad
      rules, axes used twice, dims the axes do not divide); the message
      names the shape of `x` and the logical axes.
  """
  shape = tuple(x.shape)
  where = f"constrain(x of shape {shape}, logical axes {logical_axes!r})"
  if not isinstance(logical_axes, tuple) or len(logical_axes) > len(shape):
    raise ValueError(
        f"{where}: give a tuple of at most {len(shape)} entries, one logical axis"
        " name (or mesh axis name, tuple of names, or None) per dimension of x."
    )
  resolved = resolve(logical_axes, shape, rules, mesh, where)
  sharding = NamedSharding(mesh, spec(*resolved))
  return _with_sharding_constraint(x, sharding)
