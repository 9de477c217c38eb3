"""blox.parallel: per-lane randomness, shardings from metadata, sharded init.

Depends on jax and blox-params only.

- `make_mesh(shape, names, axis_types=None)`: a mesh, Explicit axes by default
  as in `jax.make_mesh`, Auto (or a mix) on request; blox layers run on either.
- `per_lane_rng(fn, axis_name)`: each lane of `vmap` / `shard_map` draws
  its own keys at runtime; initialisation stays identical in every lane.
- `param_shardings(params, mesh, rules=None)`: `NamedSharding`s from sharding
  (`blox.params.SHARDING`) metadata, for `jax.jit(in_shardings=..., out_shardings=...)`;
  the metadata names mesh axes, or logical axes that `rules` map to mesh axes.
- `init_sharded(init_fn, mesh, *args, rules=None)`: params born on their devices.
- `abstract_params(init_fn, mesh, *args, rules=None)`: the same tree as
  sharded `jax.ShapeDtypeStruct`s, nothing allocated (a restore target).
- `constrain(x, logical_axes, mesh, rules=None)`: an activation laid out by
  the same rules (a reshard on Explicit axes, a constraint on Auto ones;
  `constraint_kind` says which).
- `shard_batch(batch, mesh, axis='data')`: a batch split over a mesh axis,
  across processes too.
- `seed_paths(params)` and `partition_spec(path, param, mesh)`: the pieces
  the functions above are built from.

Example:
  >>> import jax, numpy as np
  >>> from blox.params import SHARDING, Param, Params
  >>> import blox.parallel as bp
  >>> mesh = bp.make_mesh((1,), ('data',))
  >>> def init():
  ...   return Params({('w',): Param(np.ones((2, 2)), metadata={SHARDING: ('data',)})})
  >>> params = bp.init_sharded(init, mesh)
  >>> params[('w',)].value.sharding == bp.param_shardings(params, mesh)[('w',)].value
  True
"""

from blox.parallel._constrain import constrain as constrain
from blox.parallel._constrain import constraint_kind as constraint_kind
from blox.parallel._lanes import LaneAxisError as LaneAxisError
from blox.parallel._lanes import per_lane_rng as per_lane_rng
from blox.parallel._lanes import seed_paths as seed_paths
from blox.parallel._mesh import make_mesh as make_mesh
from blox.parallel._placement import shard_batch as shard_batch
from blox.parallel._shardings import abstract_params as abstract_params
from blox.parallel._shardings import init_sharded as init_sharded
from blox.parallel._shardings import param_shardings as param_shardings
from blox.parallel._shardings import partition_spec as partition_spec
from blox.parallel._version import __version__ as __version__

__all__ = [
    "LaneAxisError",
    "__version__",
    "abstract_params",
    "constrain",
    "constraint_kind",
    "init_sharded",
    "make_mesh",
    "param_shardings",
    "partition_spec",
    "per_lane_rng",
    "seed_paths",
    "shard_batch",
]
