"""Scans that run a stateful step over the time axis (axis 1) of a sequence.

A step has the module calling convention with a carried state:
`step(params, inputs_t, state) -> ((outputs_t, new_state), params)`, where
`inputs_t` is one time step `[batch, ...]` of every input leaf. A scan returns
`((outputs, final_state), params)` with the outputs stacked back on axis 1.

`static_scan` is a Python loop: easy to debug, unrolled under `jax.jit`.
`dynamic_scan` uses `jax.lax.scan` and compiles the step once. A scan body
is traced once and cannot add params, so while the params are unlocked
(initialisation) it runs the first step in Python, creating the params, and
scans the rest.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Params
  >>> def running_sum(params, x, total):
  ...   total = total + x
  ...   return (total, total), params
  >>> (sums, last), _ = dynamic_scan(
  ...     running_sum, Params().locked(), jnp.ones((2, 3)), jnp.zeros(2))
  >>> sums.tolist(), last.tolist()
  ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [3.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from blox.params import Params

__all__ = ["Step", "dynamic_scan", "static_scan", "time_length"]

Step = Callable[[Params, Any, Any], tuple[tuple[Any, Any], Params]]
"""`step(params, inputs_t, state) -> ((outputs_t, new_state), params)`."""


def time_length(inputs: Any, where: str = "scan") -> int:
  """The common size of axis 1 (time) of every leaf of `inputs`.

  Args:
    inputs: a pytree of arrays shaped `[batch, time, ...]`.
    where: who is asking, named in error messages (e.g. `module.where()`).

  Raises:
    ValueError: no leaves, a leaf of rank < 2, or leaves whose time lengths
      differ.
  """
  leaves = jax.tree_util.tree_leaves_with_path(inputs)
  if not leaves:
    raise ValueError(f"{where}: got no input arrays to scan over.")
  lengths: dict[int, str] = {}
  for key_path, leaf in leaves:
    name = jax.tree_util.keystr(key_path) or "inputs"
    shape = jnp.shape(leaf)
    if len(shape) < 2:
      raise ValueError(
          f"{where}: sequence inputs are shaped [batch, time, ...], but {name}"
          f" has shape {tuple(shape)} (rank {len(shape)} < 2). Add a batch axis"
          " (x[None]) or a time axis (x[:, None]) as appropriate."
      )
    lengths.setdefault(int(shape[1]), name)
  if len(lengths) > 1:
    found = ", ".join(f"{name}: {length}" for length, name in lengths.items())
    raise ValueError(
        f"{where}: every input must have the same time length (axis 1); got {found}."
    )
  (length,) = lengths
  if length == 0:
    raise ValueError(f"{where}: the inputs have no time steps (axis 1 has size 0).")
  return length


def _stack_on_time_axis(steps: list[Any]) -> Any:
  return jax.tree.map(lambda *ys: jnp.stack(ys, axis=1), *steps)


def static_scan(
    step: Step,
    params: Params,
    inputs: Any,
    state: Any,
    *,
    where: str = "static_scan",
) -> tuple[tuple[Any, Any], Params]:
  """Runs `step` over axis 1 of `inputs` with a Python loop.

  Works with unlocked params, so any step may create params. Under `jax.jit`
  the loop is unrolled: compile time grows with the length.

  Args:
    step: `step(params, inputs_t, state) -> ((outputs_t, new_state), params)`.
    params: threaded through every step (e.g. Rng counters advance).
    inputs: a pytree of arrays shaped `[batch, time, ...]`.
    state: the state before the first step; any pytree.
    where: who is scanning, named in error messages (e.g. `module.where()`).

  Returns:
    `((outputs, final_state), params)`, outputs stacked on axis 1.

  Raises:
    ValueError: see `time_length`.
  """
  length = time_length(inputs, where)
  outputs = []
  for t in range(length):
    inputs_t = jax.tree.map(lambda x: x[:, t], inputs)
    (outputs_t, state), params = step(params, inputs_t, state)
    outputs.append(outputs_t)
  return (_stack_on_time_axis(outputs), state), params


def dynamic_scan(
    step: Step,
    params: Params,
    inputs: Any,
    state: Any,
    unroll: int | bool = 1,
    *,
    where: str = "dynamic_scan",
) -> tuple[tuple[Any, Any], Params]:
  """Runs `step` over axis 1 of `inputs` with `jax.lax.scan`.

  The params travel in the scan carry, so state such as Rng counters advances
  from step to step. The step is traced once, so it must return params and
  state with the same structure (and state with the same shapes and dtypes)
  as it received.

  A scan body cannot create params, so while `params` are unlocked
  (initialisation) the first step runs as plain Python, where it creates its
  params, and `jax.lax.scan` runs the remaining steps. Initialisation thus
  compiles two copies of the step, not one per time step, and gives the same
  results as `static_scan`. A step that creates a param only after the first
  step is an error.

  Args:
    step: `step(params, inputs_t, state) -> ((outputs_t, new_state), params)`.
    params: threaded through every step.
    inputs: a pytree of arrays shaped `[batch, time, ...]`.
    state: the state before the first step; any pytree.
    unroll: passed to `jax.lax.scan`.
    where: who is scanning, named in error messages (e.g. `module.where()`).

  Returns:
    `((outputs, final_state), params)`, outputs stacked on axis 1.

  Raises:
    ValueError: see `time_length`; or the step changed the structure of the
      params (e.g. created a param after the first step), or the structure,
      shapes or dtypes of the state.
  """
  length = time_length(inputs, where)
  if params.is_locked:
    return _lax_scan(step, params, inputs, state, unroll, where)
  first = jax.tree.map(lambda x: x[:, 0], inputs)
  (first_outputs, state), params = step(params, first, state)
  if length == 1:
    return (_stack_on_time_axis([first_outputs]), state), params
  rest = jax.tree.map(lambda x: x[:, 1:], inputs)
  (outputs, state), params = _lax_scan(step, params, rest, state, unroll, where)
  outputs = jax.tree.map(
      lambda y0, ys: jnp.concatenate([jnp.expand_dims(y0, 1), ys], axis=1),
      first_outputs,
      outputs,
  )
  return (outputs, state), params


def _lax_scan(
    step: Step, params: Params, inputs: Any, state: Any, unroll: int | bool, where: str
) -> tuple[tuple[Any, Any], Params]:
  """`dynamic_scan` once the params structure is fixed."""
  # Typed as object: jax's stubs leave PyTreeDef unresolved, so mypy would
  # reject comparing it.
  params_structure: object = jax.tree.structure(params)

  def body(carry: tuple[Params, Any], inputs_t: Any) -> tuple[tuple[Params, Any], Any]:
    old_params, old_state = carry
    (outputs_t, new_state), new_params = step(old_params, inputs_t, old_state)
    if params_structure != jax.tree.structure(new_params):
      raise ValueError(_params_changed(where, old_params, new_params))
    _check_state(where, old_state, new_state)
    return (new_params, new_state), outputs_t

  time_major = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), inputs)
  (params, state), outputs = jax.lax.scan(
      body, (params, state), time_major, unroll=unroll
  )
  outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1), outputs)
  return (outputs, state), params


def _params_changed(where: str, old: Params, new: Any) -> str:
  created = [path for path in new if path not in old] if isinstance(new, Params) else []
  what = (
      f" (it created {', '.join(map(repr, created))})"
      if created
      else " (a new param, or changed trainable flags or metadata)"
  )
  return (
      f"{where}: the step returned params with another structure than it"
      f" received{what}. A lax.scan carry must keep its structure: create every"
      " param in the first step, only change values afterwards, or scan with a"
      " Python loop (static_scan, is_static=True)."
  )


def _check_state(where: str, old: Any, new: Any) -> None:
  """Raises unless `new` has the structure, shapes and dtypes of `old`."""
  # Typed as object: see `params_structure` above.
  old_structure: object = jax.tree.structure(old)
  if old_structure != jax.tree.structure(new):
    raise ValueError(
        f"{where}: the step returned a state with structure"
        f" {jax.tree.structure(new)}, but received {old_structure}; the state"
        " must keep its structure from step to step."
    )
  for (key_path, old_leaf), new_leaf in zip(
      jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new)
  ):
    before, after = jax.typeof(old_leaf), jax.typeof(new_leaf)
    # A weakly typed leaf (e.g. a Python scalar) is promoted by lax.scan
    # itself, so only a change between two definite dtypes is an error.
    dtype_changed = (
        before.dtype != after.dtype and not before.weak_type and not after.weak_type
    )
    if before.shape != after.shape or dtype_changed:
      raise ValueError(
          f"{where}: the step returned the state leaf"
          f" state{jax.tree_util.keystr(key_path)} with dtype {after.dtype} and"
          f" shape {after.shape}, but received dtype {before.dtype} and shape"
          f" {before.shape}. Under lax.scan the state must keep its shapes and"
          " dtypes from step to step: make the step return a state of the same"
          " dtype (e.g. cast it with .astype), or give an initial state of the"
          " dtype the step computes in."
      )
