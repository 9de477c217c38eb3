"""`constrain`: a sharding constraint on an activation, in logical axis names.

The same rules that place params (`param_shardings(params, mesh, rules)`)
place activations: `constrain(x, ('batch', 'mlp'), mesh, rules)` lays `x`
out as the rules map those names, whatever the mesh's axis types:

- on Explicit axes it reshards (`jax.sharding.reshard`): the sharding
  becomes part of `x`'s type, and what follows computes with it;
- on Auto axes it constrains (`jax.lax.with_sharding_constraint`): under
  `jax.jit` the partitioner takes it as a hint; outside, `x` is moved;
- on a mixed mesh, both: a reshard over the Explicit axes it names, then a
  constraint over all of them.

`constraint_kind(mesh, logical_axes, rules)` says which of these a call does.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.parallel import make_mesh
  >>> from jax.sharding import AxisType
  >>> mesh = make_mesh((1, 1), ('data', 'model'), axis_types=AxisType.Explicit)
  >>> rules = (('batch', 'data'), ('mlp', 'model'))
  >>> constrain(jnp.ones((4, 2)), ('batch', 'mlp'), mesh, rules).sharding.spec
  P('data', 'model')
  >>> constraint_kind(mesh, ('batch', 'mlp'), rules)
  'reshard'
  >>> auto = make_mesh((1, 1), ('data', 'model'), axis_types=AxisType.Auto)
  >>> y = jax.jit(lambda x: constrain(x * 2, ('batch', 'mlp'), auto, rules))(jnp.ones((4, 2)))
  >>> constraint_kind(auto, ('batch', 'mlp'), rules)
  'constraint'

"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from blox.parallel._rules import Rules, resolve
from blox.parallel._util import spec

__all__ = ["constrain", "constraint_kind"]

# with_sharding_constraint has no annotations; calling it through this typed
# name keeps mypy's strict untyped-call check on everywhere else.
_with_sharding_constraint: Callable[[jax.Array, NamedSharding], jax.Array] = (
    jax.lax.with_sharding_constraint
)
_reshard: Callable[[jax.Array, NamedSharding], jax.Array] = jax.sharding.reshard


def _explicit_axes(mesh: Mesh) -> set[str]:
  return {name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Explicit}


def _used_axes(resolved: tuple[Any, ...]) -> set[str]:
  used: set[str] = set()
  for entry in resolved:
    if entry is not None:
      used.update((entry,) if isinstance(entry, str) else entry)
  return used


def constraint_kind(mesh: Mesh, logical_axes: tuple[Any, ...], rules: Rules | None = None) -> str:
  """What `constrain` does with these axes on `mesh`: 'reshard' (Explicit
  axes only), 'constraint' (Auto axes only, or none) or 'reshard+constraint'
  (a mixed mesh whose axes of both kinds are named)."""
  shape = tuple(1 for _ in logical_axes)
  # Sizes do not matter here, only which mesh axes the names resolve to.
  resolved = resolve(logical_axes, shape, rules, _sizeless(mesh), "constraint_kind")
  used, explicit = _used_axes(resolved), _explicit_axes(mesh)
  if used and used <= explicit:
    return "reshard"
  if used & explicit:
    return "reshard+constraint"
  return "constraint"


def _sizeless(mesh: Mesh) -> Any:
  """`mesh` as `resolve` sees it, with every axis of size 1."""
  return jax.sharding.AbstractMesh((1,) * len(mesh.axis_names), tuple(mesh.axis_names))


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
    `x` laid out by `NamedSharding(mesh, spec)`: resharded on Explicit axes,
    constrained on Auto ones (see the module docstring and
    `constraint_kind`).

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
  explicit = _explicit_axes(mesh)
  used = _used_axes(resolved)
  if used & explicit:
    only_explicit = [
        None if entry is None else _keep(entry, explicit) for entry in resolved
    ]
    x = _reshard(x, NamedSharding(mesh, spec(*only_explicit)))
    if used <= explicit:
      return x
  return _with_sharding_constraint(x, NamedSharding(mesh, spec(*resolved)))


def _keep(entry: Any, axes: set[str]) -> Any:
  """`entry` (a mesh axis or a tuple of them) without the axes not in `axes`."""
  names = (entry,) if isinstance(entry, str) else tuple(entry)
  kept = tuple(name for name in names if name in axes)
  return None if not kept else kept[0] if len(kept) == 1 else kept
