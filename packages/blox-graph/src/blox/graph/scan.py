"""Scans that run a stateful step over the time axis (axis 1) of a sequence.

A step has the module calling convention with a carried state:
`step(params, inputs_t, state) -> ((outputs_t, new_state), params)`, where
`inputs_t` is one time step `[batch, ...]` of every input leaf. A scan returns
`((outputs, final_state), params)` with the outputs stacked back on axis 1.

`static_scan` is a Python loop: easy to debug, unrolled under `jax.jit`.
`dynamic_scan` uses `jax.lax.scan` and compiles the step once; because a scan
body is traced once and cannot add params, it runs the Python loop instead
while the params are unlocked (initialisation).

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
    where: who is asking, named in error messages (e.g. a module path).

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
    step: Step, params: Params, inputs: Any, state: Any
) -> tuple[tuple[Any, Any], Params]:
  """Runs `step` over axis 1 of `inputs` with a Python loop.

  Works with unlocked params, so the first step may create params. Under
  `jax.jit` the loop is unrolled: compile time grows with the length.

  Args:
    step: `step(params, inputs_t, state) -> ((outputs_t, new_state), params)`.
    params: threaded through every step (e.g. Rng counters advance).
    inputs: a pytree of arrays shaped `[batch, time, ...]`.
    state: the state before the first step; any pytree.

  Returns:
    `((outputs, final_state), params)`, outputs stacked on axis 1.

  Raises:
    ValueError: see `time_length`.
  """
  length = time_length(inputs, "static_scan")
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
) -> tuple[tuple[Any, Any], Params]:
  """Runs `step` over axis 1 of `inputs` with `jax.lax.scan`.

  The params travel in the scan carry, so state such as Rng counters advances
  from step to step. The step is traced once, so it must return params and
  state with the same structure (and state with the same shapes and dtypes)
  as it received. Creating a param inside the scan body is impossible, so
  while `params` are unlocked this runs `static_scan` instead.

  Args:
    step: `step(params, inputs_t, state) -> ((outputs_t, new_state), params)`.
    params: threaded through every step.
    inputs: a pytree of arrays shaped `[batch, time, ...]`.
    state: the state before the first step; any pytree.
    unroll: passed to `jax.lax.scan`.

  Returns:
    `((outputs, final_state), params)`, outputs stacked on axis 1.

  Raises:
    ValueError: see `time_length`; or the step changed the structure of the
      params or of the state.
  """
  if not params.is_locked:
    return static_scan(step, params, inputs, state)
  time_length(inputs, "dynamic_scan")
  # Typed as object: jax's stubs leave PyTreeDef unresolved, so mypy would
  # reject comparing it.
  params_structure: object = jax.tree.structure(params)
  state_structure: object = jax.tree.structure(state)

  def body(carry: tuple[Params, Any], inputs_t: Any) -> tuple[tuple[Params, Any], Any]:
    (outputs_t, new_state), new_params = step(carry[0], inputs_t, carry[1])
    if params_structure != jax.tree.structure(new_params):
      raise ValueError(
          "dynamic_scan: the step returned params with another structure than it"
          " received (a new param, or changed trainable flags or metadata). A"
          " lax.scan carry must keep its structure: create params during"
          " initialisation (unlocked params) and only change values afterwards."
      )
    if state_structure != jax.tree.structure(new_state):
      raise ValueError(
          f"dynamic_scan: the step returned a state with structure"
          f" {jax.tree.structure(new_state)}, but received {state_structure};"
          " the state must keep its structure from step to step."
      )
    return (new_params, new_state), outputs_t

  time_major = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), inputs)
  (params, state), outputs = jax.lax.scan(
      body, (params, state), time_major, unroll=unroll
  )
  outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1), outputs)
  return (outputs, state), params
