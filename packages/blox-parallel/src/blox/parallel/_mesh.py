"""`make_mesh`: a device mesh whose axis types are said in one argument.

Since JAX 0.9 `jax.make_mesh` makes axes of type `AxisType.Explicit`: an
array's sharding is part of its type (`jax.typeof(x)` shows `f32[8@data, 4]`),
and an operation whose output sharding its inputs leave open must be told it.
blox's layers say it (their contractions choose the output sharding from
their operands', see `blox.nn.contract`), so the same model runs on Explicit
meshes, on `AxisType.Auto` meshes (where the compiler propagates shardings
from the params and the batch and inserts the collectives), and on meshes that
mix the two. The default is Explicit, as `jax.make_mesh`'s; pass
`axis_types=AxisType.Auto` where the compiler should choose the shardings
between the ones you pin (a model written for Auto that constrains its
activations itself, or a quick experiment), or one type per axis for a mix.

Example:
  >>> mesh = make_mesh((1, 1), ('data', 'model'))
  >>> dict(mesh.shape), mesh.axis_types
  ({'data': 1, 'model': 1}, (Explicit, Explicit))
  >>> from jax.sharding import AxisType
  >>> make_mesh((1,), ('data',), axis_types=AxisType.Auto).axis_types
  (Auto,)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

__all__ = ["make_mesh"]


def make_mesh(
    axis_shapes: Sequence[int],
    axis_names: Sequence[str],
    *,
    axis_types: AxisType | Sequence[AxisType] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """`jax.make_mesh`, with the axis types said in one argument.

  Args:
    axis_shapes: the size of each mesh axis; their product must not exceed
      the number of devices.
    axis_names: one name per axis, e.g. `('data', 'model')`.
    axis_types: `AxisType.Explicit` (the default, as in `jax.make_mesh`) or
      `AxisType.Auto` for every axis, or one type per axis for a mixed mesh.
    devices: the devices to use; all of them (of every process) by default.
  """
  where = f"make_mesh({tuple(axis_shapes)}, {tuple(axis_names)})"
  if len(axis_shapes) != len(axis_names):
    raise ValueError(
        f"{where}: {len(axis_shapes)} axis sizes but {len(axis_names)} names; give"
        " one name per axis."
    )
  if axis_types is None:
    axis_types = AxisType.Explicit
  types = (axis_types,) * len(axis_names) if isinstance(axis_types, AxisType) else tuple(axis_types)
  if len(types) != len(axis_names) or not all(isinstance(t, AxisType) for t in types):
    raise ValueError(
        f"{where}: axis_types must be one jax.sharding.AxisType or one per axis"
        f" ({len(axis_names)}), got {axis_types!r}."
    )
  return jax.make_mesh(tuple(axis_shapes), tuple(axis_names), axis_types=types, devices=devices)
