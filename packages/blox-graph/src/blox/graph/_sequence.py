"""Sequence modules: a single-step interface and recurrences scanned over time.

`SequenceBase` is the interface of every module that processes a sequence
step by step while carrying a state (any pytree, e.g. a NamedTuple):

- `initial_state(params, inputs)`: the state before the first step, for ONE
  step of inputs `[batch, ...]`.
- `module(params, inputs, prev_state)`: one step.
- `module.apply(params, inputs, prev_state)`: a whole sequence
  `[batch, time, ...]`.

`RecurrenceBase` implements `apply` by scanning the single step over the time
axis, with a Python loop (`static_scan`, `is_static=True`) or `jax.lax.scan`
(`dynamic_scan`); with `is_reset` flags the step is first wrapped by
`with_reset`, which restarts flagged batch elements from the initial state.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> class Accumulate(RecurrenceBase):
  ...   def initial_state(self, params, inputs, **kwargs):
  ...     return jnp.zeros_like(inputs), params
  ...   def __call__(self, params, inputs, prev_state, **kwargs):
  ...     total = prev_state + inputs
  ...     return (total, total), params
  >>> acc = Accumulate(Graph('net').child('acc'))
  >>> (sums, last), _ = acc.apply(
  ...     Params(), jnp.ones((1, 3, 2)), is_reset=jnp.array([[False, True, False]]))
  >>> sums[0, :, 0].tolist()
  [1.0, 1.0, 2.0]
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph._module import Module
from blox.graph._scan import Step, dynamic_scan, static_scan, time_length
from blox.graph._settings import setting
from blox.params import Params

__all__ = ["RecurrenceBase", "SequenceBase", "maybe_reset_state", "with_reset"]


class SequenceBase(Module):
  """The interface of modules that run over sequences with a carried state.

  Subclasses implement the three methods below. Inputs of a single step are
  shaped `[batch, ...]`; inputs of a sequence `[batch, time, ...]`. A state is
  any pytree whose leaves have a leading batch axis.
  """

  @abc.abstractmethod
  def initial_state(
      self, params: Params, inputs: Any, *args: Any, **kwargs: Any
  ) -> tuple[Any, Params]:
    """Returns `(state, params)`: the state before the first step.

    `inputs` is ONE step `[batch, ...]`; it gives the batch shape and dtype.
    """

  @abc.abstractmethod
  def __call__(
      self, params: Params, inputs: Any, prev_state: Any, *args: Any, **kwargs: Any
  ) -> tuple[tuple[Any, Any], Params]:
    """One step: returns `((outputs, new_state), params)` for inputs `[batch, ...]`."""

  @abc.abstractmethod
  def apply(
      self, params: Params, inputs: Any, prev_state: Any = None, *args: Any, **kwargs: Any
  ) -> tuple[tuple[Any, Any], Params]:
    """A whole sequence: returns `((outputs, final_state), params)` for inputs
    `[batch, time, ...]`, outputs shaped `[batch, time, ...]`."""


def maybe_reset_state(state: Any, initial_state: Any, is_reset: Any) -> Any:
  """Replaces the batch elements flagged in `is_reset` by the initial state.

  Args:
    state: the current state, a pytree of arrays `[batch, ...]`.
    initial_state: a pytree with the same structure and shapes.
    is_reset: booleans of shape `[batch]`; True resets that batch element.
      It is broadcast over the trailing (feature) axes of every leaf.

  Returns:
    A state of the same structure, shapes and dtypes as `state`.

  Raises:
    ValueError: `is_reset` is not of shape `[batch]`, or the two states differ
      in structure or shapes.
  """
  is_reset = jnp.asarray(is_reset)
  if is_reset.ndim != 1:
    raise ValueError(
        f"is_reset must have shape [batch], got shape {is_reset.shape}; for a"
        " sequence pass [batch, time] flags to apply() instead."
    )
  flags = is_reset.astype(bool)
  # Typed as object: jax's stubs leave PyTreeDef unresolved for mypy.
  state_structure: object = jax.tree.structure(state)
  if state_structure != jax.tree.structure(initial_state):
    raise ValueError(
        f"Cannot reset the state {state_structure} to an initial state of"
        f" another structure, {jax.tree.structure(initial_state)}."
    )

  def reset(current: Any, initial: Any) -> Any:
    current = jnp.asarray(current)
    initial = jnp.asarray(initial)
    if current.shape != initial.shape:
      raise ValueError(
          f"Cannot reset a state leaf of shape {current.shape} to an initial"
          f" value of shape {initial.shape}."
      )
    if current.ndim < 1 or current.shape[0] != flags.shape[0]:
      raise ValueError(
          f"is_reset has {flags.shape[0]} batch elements, but a state leaf has"
          f" shape {current.shape}; every state leaf needs the batch axis first."
      )
    # One flag per batch element, broadcast over the feature axes.
    mask = flags.reshape(flags.shape + (1,) * (current.ndim - 1))
    return jnp.where(mask, initial.astype(current.dtype), current)

  return jax.tree.map(reset, state, initial_state)


def with_reset(step: Step, initial_state: Any) -> Step:
  """`step` that first resets the flagged batch elements of its state.

  The returned step takes, for each time step, inputs `(inputs_t, is_reset_t)`
  with `is_reset_t` of shape `[batch]`, and runs `step` on `inputs_t` from
  `maybe_reset_state(state, initial_state, is_reset_t)`: a batch element
  whose flag is True starts a new sequence at that step.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.graph import static_scan
    >>> def running_sum(params, x, total):
    ...   return (total + x, total + x), params
    >>> flags = jnp.array([[False, False, True]])
    >>> (sums, _), _ = static_scan(
    ...     with_reset(running_sum, jnp.zeros(1)), Params(), (jnp.ones((1, 3)), flags),
    ...     jnp.zeros(1))
    >>> sums.tolist()
    [[1.0, 2.0, 1.0]]
  """

  def reset_then_step(params: Params, inputs_t: Any, state: Any) -> tuple[tuple[Any, Any], Params]:
    inputs_t, is_reset_t = inputs_t
    return step(params, inputs_t, maybe_reset_state(state, initial_state, is_reset_t))

  return reset_then_step


class RecurrenceBase(SequenceBase):
  """A `SequenceBase` whose `apply` scans the single step `__call__` over time.

  Subclasses implement `initial_state` and `__call__` (which must accept the
  keyword `is_training`). A subclass that writes its own `__init__` passes
  `is_static` on by keyword: `super().__init__(graph, is_static=is_static)`.
  """

  is_static: bool = setting(
      default=False,
      doc="scan over time with a Python loop (`static_scan`: debuggable, unrolled"
      " under jit) instead of `jax.lax.scan` (`dynamic_scan`).",
  )

  def apply(
      self,
      params: Params,
      inputs: Any,
      prev_state: Any = None,
      is_reset: Any = None,
      is_training: bool = True,
      **kwargs: Any,
  ) -> tuple[tuple[Any, Any], Params]:
    """Runs the recurrence over inputs shaped `[batch, time, ...]`.

    Args:
      params: threaded through every step.
      inputs: a pytree of arrays `[batch, time, ...]`.
      prev_state: the state before the first step; None means
        `initial_state(params, inputs[:, 0])`.
      is_reset: optional booleans `[batch, time]`; where `is_reset[b, t]` is
        True, the state of batch element `b` is reset to the initial state
        just before step `t` runs (step `t` starts a new sequence).
      is_training: passed to every step.
      **kwargs: further keyword arguments passed to every step.

    Returns:
      `((outputs, final_state), params)`, outputs stacked on axis 1.

    Raises:
      ValueError: inputs of rank < 2, time lengths that differ (between the
        inputs, or between inputs and `is_reset`), `is_reset` of another
        shape than `[batch, time]`, or (with `jax.lax.scan`) a step that
        returns a state of other dtypes or shapes than it received, or
        creates a param after the first step.
    """
    where = self.where()
    length = time_length(inputs, where)
    if is_reset is not None:
      is_reset = jnp.asarray(is_reset)
      batch = jnp.shape(jax.tree.leaves(inputs)[0])[0]
      if is_reset.shape != (batch, length):
        raise ValueError(
            f"{where}: is_reset must have shape [batch, time] ="
            f" {(batch, length)} to match the inputs, got {is_reset.shape}."
        )
    # A reset needs the initial state even when the sequence starts from another.
    if prev_state is None or is_reset is not None:
      initial, params = self.initial_state(params, jax.tree.map(lambda x: x[:, 0], inputs))
      if prev_state is None:
        prev_state = initial

    def step(params: Params, inputs_t: Any, state: Any) -> tuple[tuple[Any, Any], Params]:
      result: tuple[tuple[Any, Any], Params] = self(
          params, inputs_t, state, is_training=is_training, **kwargs
      )
      return result

    scan_step: Step = step
    if is_reset is not None:
      scan_step, inputs = with_reset(step, initial), (inputs, is_reset)
    if self.is_static:
      return static_scan(scan_step, params, inputs, prev_state, where=where)
    return dynamic_scan(scan_step, params, inputs, prev_state, where=where)
