"""`per_lane_rng`: a different random stream in every parallel lane.

Params are usually replicated across the lanes of `jax.vmap` or the devices
of `jax.shard_map`, so every lane would draw the same keys (the same dropout
mask everywhere). `per_lane_rng(fn, axis_name)` folds the lane index into
every Rng seed in the params while `fn` runs, then puts the original seeds
back, so the returned params stay identical across lanes. During
initialisation (unlocked params) nothing is folded, so every lane creates the
same params.

Random streams are found by metadata (`blox.params.RNG_STREAM`), so this
works with any module that keeps its seed that way.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, Param, Params
  >>> params = Params({
  ...     ('rng', 'seed'): Param(jax.random.key(0), False, {RNG_STREAM: RNG_SEED}),
  ...     ('rng', 'counter'): Param(jnp.uint32(0), False, {RNG_STREAM: RNG_COUNTER}),
  ... }).locked()
  >>> def noise(params, x):
  ...   key = jax.random.fold_in(params[('rng', 'seed')].value, 0)
  ...   return x + jax.random.normal(key), params
  >>> out, _ = jax.vmap(per_lane_rng(noise, 'batch'), in_axes=(None, 0),
  ...                   out_axes=(0, None), axis_name='batch')(params, jnp.zeros(2))
  >>> bool(out[0] != out[1])
  True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from blox.params import RNG_SEED, RNG_STREAM, Params, Path, is_prng_key
from blox.parallel._util import axis_names

__all__ = ["LaneAxisError", "per_lane_rng", "seed_paths"]

Out = TypeVar("Out")
AxisNames = str | Sequence[str]


class LaneAxisError(NameError):
  """`per_lane_rng` ran outside a parallel context that binds its axis name."""


def seed_paths(params: Params) -> list[Path]:
  """The paths of every Rng seed in `params`, found by their metadata tag.

  A seed is a param whose metadata maps `blox.params.RNG_STREAM` to
  `blox.params.RNG_SEED`.
  """
  if not isinstance(params, Params):
    raise TypeError(f"Expected a blox Params, got {type(params).__name__}.")
  return [path for path in params if params[path].metadata.get(RNG_STREAM) == RNG_SEED]


def _lane_axes(axis_name: AxisNames) -> tuple[str, ...]:
  names = axis_names(axis_name)
  if names is None:
    raise TypeError(
        "per_lane_rng needs axis_name to be an axis name or a non-empty tuple of"
        f" names, like 'batch' or ('data', 'model'); got {axis_name!r}."
    )
  return names


def _lane_index(name: str) -> jax.Array:
  try:
    return jax.lax.axis_index(name)
  except NameError as error:
    raise LaneAxisError(
        f"per_lane_rng: the axis {name!r} is not bound here, so there is no lane"
        f" index to fold into the seeds. Call the wrapped function inside"
        f" jax.vmap(..., axis_name={name!r}) or jax.shard_map over a mesh with"
        f" an axis named {name!r}. (JAX said: {error})"
    ) from None


def _fold(seed: jax.Array, index: jax.Array) -> jax.Array:
  """`fold_in` for a single key or, elementwise, for an array of typed keys."""
  if is_prng_key(seed) and seed.ndim > 0:
    flat = jax.vmap(lambda key: jax.random.fold_in(key, index))(seed.reshape(-1))
    return flat.reshape(seed.shape)
  return jax.random.fold_in(seed, index)


def per_lane_rng(
    fn: Callable[..., tuple[Out, Params]], axis_name: AxisNames
) -> Callable[..., tuple[Out, Params]]:
  """Wraps `fn(params, *args, **kwargs) -> (out, params)` to give each lane its own keys.

  With locked params (runtime), the lane index along each named axis is
  folded, in the given order, into every Rng seed found in params
  (`jax.random.fold_in`), `fn` runs, and the original seeds are put back into
  the returned params. Counters advance in `fn` as usual and identically in
  every lane, so the returned params are the same in every lane and can leave
  `vmap` with `out_axes=None` or `shard_map` with a replicated spec.

  Every seed present on entry is put back, whatever `fn` did with it, so
  `fn` may contain any transform (`jax.jit`, `jax.checkpoint`, `lax.scan`).
  To reseed a stream, do it outside the wrapped function.

  With unlocked params (initialisation), `fn` runs unchanged, so all lanes
  create identical params; no axis needs to be bound then.

  Args:
    fn: a function taking params first and returning `(out, params)`.
    axis_name: the axis name (or tuple of names) of the enclosing `jax.vmap`
      or `jax.shard_map` whose lane index makes the randomness differ.

  Returns:
    A function with the same signature as `fn`.

  Raises:
    LaneAxisError: (a `NameError`) when called with locked params outside a
      context that binds every named axis.
  """
  names = _lane_axes(axis_name)

  def wrapped(params: Params, *args: Any, **kwargs: Any) -> tuple[Out, Params]:
    if not isinstance(params, Params):
      raise TypeError(
          f"per_lane_rng({getattr(fn, '__name__', fn)!r}): the first argument"
          f" must be a blox Params, got {type(params).__name__}."
      )
    if not params.is_locked:
      return fn(params, *args, **kwargs)
    indices = [_lane_index(name) for name in names]
    originals = {path: params[path].value for path in seed_paths(params)}
    folded = params
    for path, seed in originals.items():
      for index in indices:
        seed = _fold(seed, index)
      folded = folded.set(path, seed)
    out, new_params = fn(folded, *args, **kwargs)
    if not isinstance(new_params, Params):
      raise TypeError(
          f"per_lane_rng({getattr(fn, '__name__', fn)!r}): the wrapped function"
          f" must return (out, params); its second output is"
          f" {type(new_params).__name__}."
      )
    # Put back the unfolded seeds: the lanes differ only in them, and
    # replicated outputs must agree in every lane. Always, not only when `fn`
    # passed the folded seed through: a jit or checkpoint inside `fn` returns
    # new objects, and traced values cannot be compared.
    for path, seed in originals.items():
      if path in new_params:
        new_params = new_params.set(path, seed)
    return out, new_params

  # Name and docstring only: `fn` may be a module, whose attributes must not
  # be copied onto the wrapper.
  functools.update_wrapper(wrapped, fn, updated=())
  return wrapped
