"""`make_mesh`: a device mesh whose axes the compiler partitions automatically.

`jax.make_mesh` now makes *explicit* axes by default, where shardings are
part of every array's type: a matmul that contracts a sharded dimension, or
an input whose sharding differs from a `shard_map` spec, is then an error
until the code says how to reshard. blox's training loops rely on the
classic behaviour instead (`jax.jit` propagates the shardings of params and
batch and inserts the collectives), which *auto* axes give.

Example:
  >>> mesh = make_mesh((1, 1), ('data', 'model'))
  >>> dict(mesh.shape)
  {'data': 1, 'model': 1}
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
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """`jax.make_mesh` with every axis of type `AxisType.Auto`.

  Args:
    axis_shapes: the size of each mesh axis; their product must not exceed
      the number of devices.
    axis_names: one name per axis, e.g. `('data', 'model')`.
    devices: the devices to use; all of them (of every process) by default.
  """
  if len(axis_shapes) != len(axis_names):
    raise ValueError(
        f"make_mesh: {len(axis_shapes)} axis sizes {tuple(axis_shapes)} but"
        f" {len(axis_names)} names {tuple(axis_names)}; give one name per axis."
    )
  return jax.make_mesh(
      tuple(axis_shapes), tuple(axis_names),
      axis_types=(AxisType.Auto,) * len(axis_names), devices=devices,
  )
