"""Placing a batch on a mesh, split along a data axis.

`shard_batch` splits the leading axis of every array of a pytree over one or
more mesh axes. With several processes (`jax.distributed.initialize`), each
process passes only its own part of the global batch, and the parts are
joined into one global array, in process order.

Example:
  >>> import jax, numpy as np
  >>> mesh = jax.make_mesh((1,), ('data',))
  >>> batch = shard_batch({'x': np.ones((4, 3))}, mesh)
  >>> batch['x'].sharding.spec
  P('data',)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from blox.parallel._util import axis_names, spec

__all__ = ["shard_batch"]

# This jax function has no annotations; calling it through a typed name
# keeps mypy's strict untyped-call check on everywhere else.
_from_process_data: Callable[[NamedSharding, np.ndarray], jax.Array] = (
    jax.make_array_from_process_local_data
)


def _batch_axes(axis: str | tuple[str, ...], mesh: Mesh) -> tuple[str, ...]:
  names = axis_names(axis)
  if names is None or any(name not in mesh.axis_names for name in names):
    raise ValueError(
        f"shard_batch: axis {axis!r} is not an axis (or tuple of axes) of the"
        f" mesh, whose axes are {tuple(mesh.axis_names)}; pass axis=... with"
        " one of those names."
    )
  return names


def _local_parts(mesh: Mesh, names: tuple[str, ...]) -> int:
  """How many of the batch's parts land on this process's devices."""
  order = [mesh.axis_names.index(name) for name in names]
  devices = np.moveaxis(np.asarray(mesh.devices), order, list(range(len(names))))
  rows = devices.reshape(math.prod(mesh.shape[name] for name in names), -1)
  here = jax.process_index()
  return sum(any(d.process_index == here for d in row) for row in rows)


def shard_batch(tree: Any, mesh: Mesh, axis: str | tuple[str, ...] = "data") -> Any:
  """Puts every array of `tree` on `mesh`, split along its leading axis.

  The leading axis is split over the mesh axis `axis` (or over several axes,
  as a tuple) and replicated over the other mesh axes.

  In a single process, `tree` is the whole batch. When `jax.process_count() >
  1`, `tree` is this process's part of the global batch: every process passes
  the same number of rows, which go to the slices of the global batch that
  its devices hold. For meshes from `make_mesh` / `jax.make_mesh`, whose
  device order starts with process 0's devices, that is process `i` feeding
  the `i`-th block of rows. The result is a global array built with
  `jax.make_array_from_process_local_data`.

  Raises:
    ValueError: `axis` is not a mesh axis, an array is a scalar, or its
      leading size does not split evenly over the devices along `axis`.
  """
  names = _batch_axes(axis, mesh)
  sharding = NamedSharding(mesh, spec(names if len(names) > 1 else names[0]))
  parts = math.prod(mesh.shape[name] for name in names)
  multi_process = jax.process_count() > 1
  local_parts = _local_parts(mesh, names) if multi_process else parts

  def place(path: tuple[Any, ...], leaf: Any) -> jax.Array:
    where = jax.tree_util.keystr(path) or "the batch"
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
          f"shard_batch: {where} is a scalar; every array of a batch needs a"
          " leading batch axis to split (place other values with jax.device_put)."
      )
    if shape[0] % local_parts:
      scope = "this process's part of the batch" if multi_process else "the batch"
      raise ValueError(
          f"shard_batch: {where} has {shape[0]} rows in {scope}, which do not"
          f" split evenly over the {local_parts} devices along mesh axis"
          f" {axis!r}; use a batch size that is a multiple of {local_parts}."
      )
    if multi_process:
      return _from_process_data(sharding, np.asarray(leaf))
    placed: jax.Array = jax.device_put(leaf, sharding)
    return placed

  return jax.tree_util.tree_map_with_path(place, tree)

