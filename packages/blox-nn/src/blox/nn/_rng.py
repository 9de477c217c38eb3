"""`Rng`: a random stream whose seed and counter live in `Params`.

Each call returns `jax.random.fold_in(seed, counter)` and advances the counter,
so randomness is reproducible and flows through jit, grad and vmap like any
other state.

Example:
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> rng = Rng(Graph('net').child('rng'))
  >>> params = rng.seed(Params(), seed=0)
  >>> key, params = rng(params)
  >>> int(rng.get_counter(params))
  1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.graph import Module
from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, Params, is_array, is_prng_key

__all__ = ["Rng"]


class Rng(Module):
  """A seed-and-counter random stream; the key source of blox.

  The seed (a typed PRNG key) and the counter (uint32) are non-trainable
  params tagged with `blox.params.RNG_STREAM` metadata, so tools can find
  every stream in a `Params` without the `Rng` objects.
  """

  def seed(
      self, params: Params, *, seed: int | np.integer[Any] | jax.Array | None = None,
      counter: int | jax.Array | None = None,
  ) -> Params:
    """Creates the stream, or updates its seed and/or counter.

    Args:
      params: the params to update.
      seed: an int (becomes `jax.random.key(seed)`) or a key array (kept as
        is). Required to create the stream.
      counter: the next counter value; 0 when creating without it.

    Raises:
      ValueError: neither seed nor counter given, or creating without a seed.
    """
    if seed is None and counter is None:
      raise ValueError(
          f"{self.where()}: give seed=..., counter=... or both."
      )
    seed_key = None if seed is None else _as_key(seed, self.where())
    counter_value = None if counter is None else jnp.asarray(counter, jnp.uint32)
    seed_path = self.param_path("seed")
    if seed_path not in params:
      if seed_key is None:
        raise ValueError(
            f"{self.where()} has no stream yet; create it with"
            " rng.seed(params, seed=...)."
        )
      params = self._create(params, "seed", seed_key, RNG_SEED)
      start = jnp.zeros((), jnp.uint32) if counter_value is None else counter_value
      return self._create(params, "counter", start, RNG_COUNTER)
    if seed_key is not None:
      params = self.set_param(params, "seed", seed_key)
    if counter_value is not None:
      params = self.set_param(params, "counter", counter_value)
    return params

  def init(
      self,
      model: Callable[..., Any],
      *args: Any,
      seed: int | np.integer[Any] | jax.Array = 0,
      **kwargs: Any,
  ) -> Params:
    """The params `model` creates on `args`, from this stream seeded with `seed`, locked.

    One line for the usual initialisation: it runs
    `model(rng.seed(Params(), seed=seed), *args, **kwargs)` and returns the
    params of its `(outputs, params)` result, locked (creating a param
    later is an error). `model` is any `(params, *args) -> (outputs, params)`
    callable: a `Module`, a method such as `lstm.apply`, or a function. Its
    outputs are dropped. It runs eagerly; wrapped in `jax.jit` (the model
    static, e.g. `jax.jit(lambda x: rng.init(model, x))`) it traces the model
    once and returns the same params, computed by the compiled function; in
    `jax.eval_shape` it returns their shapes without computing them.

    Example:
      >>> import jax.numpy as jnp
      >>> from blox.graph import Graph
      >>> from blox.nn import Linear
      >>> graph = Graph('net')
      >>> rng = Rng(graph.child('rng'))
      >>> linear = Linear(graph.child('out'), 2, rng=rng)
      >>> params = rng.init(linear, jnp.ones((1, 3)), seed=0)
      >>> params.is_locked, params[('net', 'out', 'kernel')].value.shape
      (True, (3, 2))

    Raises:
      TypeError: `model` does not return an `(outputs, params)` pair.
    """
    result = model(self.seed(Params(), seed=seed), *args, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params)):
      got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
      raise TypeError(
          f"{self.where()}: init ran {_name(model)}, which returned {got}, not an"
          " (outputs, params) pair; the model must return the params it was given"
          " (with those it created), e.g. `return outputs, params`."
      )
    return result[1].locked()

  def _create(self, params: Params, name: str, value: jax.Array, tag: str) -> Params:
    _, params = self.get_param(
        params, name, value.shape, init=lambda *_: value, param_dtype=value.dtype,
        trainable=False, metadata={RNG_STREAM: tag},
    )
    return params

  def _read(self, params: Params, name: str) -> Any:
    path = self.param_path(name)
    if path not in params:
      raise KeyError(
          f"{self.where()} is not seeded (no param {path!r}); call"
          " rng.seed(params, seed=...) first."
      )
    return params[path].value

  def get_seed(self, params: Params) -> jax.Array:
    """The stream's seed key."""
    seed: jax.Array = self._read(params, "seed")
    return seed

  def get_counter(self, params: Params) -> jax.Array:
    """The stream's next counter value (uint32)."""
    counter: jax.Array = self._read(params, "counter")
    return counter

  def __call__(self, params: Params) -> tuple[jax.Array, Params]:
    """Returns `(fold_in(seed, counter), params)` with the counter advanced."""
    seed = self.get_seed(params)
    counter = self.get_counter(params)
    key = jax.random.fold_in(seed, counter)
    return key, self.set_param(params, "counter", counter + jnp.uint32(1))


def _as_key(seed: int | np.integer[Any] | jax.Array, where: str) -> jax.Array:
  """`seed` as a typed key: an int or an integer scalar array becomes
  `jax.random.key(seed)`, a typed key is kept as it is."""
  if isinstance(seed, int):
    if not isinstance(seed, bool):  # True is an int to Python, but no seed
      return jax.random.key(seed)
  elif isinstance(seed, jax.Array) and is_prng_key(seed):
    return seed
  elif is_array(seed) or isinstance(seed, jax.core.Tracer):
    # An integer scalar array (np.int64(3), a traced index) is a seed like an
    # int; stored as is it would fail later, in fold_in, with a cryptic error.
    if tuple(seed.shape) == () and jnp.issubdtype(seed.dtype, jnp.integer):
      return jax.random.key(seed)
  raise TypeError(
      f"{where}: seed must be an int or a key array, got {type(seed).__name__}"
      f"{_dtype_text(seed)}; pass an int or a typed key such as jax.random.key(0)"
      " (wrap a raw uint32 key with jax.random.wrap_key_data)."
  )


def _name(model: Any) -> str:
  """How `init`'s error names the model: a module by `where()`, else by name."""
  if isinstance(model, Module):
    return model.where()
  name = getattr(model, "__qualname__", None) or getattr(model, "__name__", None)
  return repr(model) if name is None else f"`{name}`"


def _dtype_text(value: Any) -> str:
  dtype = getattr(value, "dtype", None)
  return "" if dtype is None else f" of dtype {dtype}"
