"""Gradients of a loss over `Params`, without the split/grad/merge boilerplate.

A blox loss function runs the model, so it returns the new params along with
the loss: `loss, params = loss_fn(params, batch)`. Differentiating it by hand
means splitting off the trainable half, merging it back inside the
differentiated function, and carrying the new non-trainable state (random
stream counters, running statistics) out as auxiliary output.
`value_and_grad` does exactly that and nothing else: it is a plain function
over `jax.value_and_grad`, with no hidden state, and works under `jax.jit`.

Example (plain SGD):
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({
  ...     ('w',): Param(jnp.array([1.0, 2.0])),
  ...     ('steps',): Param(jnp.zeros((), jnp.int32), trainable=False),
  ... }).locked()
  >>> def loss_fn(params, x):
  ...   loss = jnp.sum((params[('w',)].value * x) ** 2)
  ...   return loss, params.set(('steps',), params[('steps',)].value + 1)
  >>> loss, params, grads = jax.jit(value_and_grad(loss_fn))(params, 3.0)
  >>> float(loss), params[('steps',)].value.item()
  (45.0, 1)
  >>> trainable, rest = params.split()
  >>> params = jax.tree.map(lambda w, g: w - 0.01 * g, trainable, grads).merge(rest)
  >>> params[('w',)].value
  Array([0.82, 1.64], dtype=float32)

Recipes with optax (optax is not a dependency of blox; any optimizer working
on pytrees does). `Params` is a pytree, so optax keeps its structure: the
optimizer state holds `Params`-shaped moments, `optimizer.update` returns
`Params`-shaped updates and `optax.apply_updates` returns `Params` with the
same tree structure as its input.

A train step. Initialise the optimizer on the trainable half only; params
with `trainable=False` (e.g. after `module.set_param(params, name,
trainable=False)`) then get no optimizer state and are never updated:

    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params.split()[0])

    @jax.jit
    def train_step(params, opt_state, x, y):
      loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
      trainable, rest = params.split()
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      params = optax.apply_updates(trainable, updates).merge(rest)
      return params, opt_state, loss

Weight decay on some params only. The pytree key of every value is
`jax.tree_util.DictKey(path)`, so a mask can be built from paths with
`jax.tree_util.tree_map_with_path`; here only kernels are decayed:

    def decay_kernels(params):
      return jax.tree_util.tree_map_with_path(
          lambda key_path, _: key_path[-1].key[-1] == 'kernel', params)

    optimizer = optax.adamw(1e-3, weight_decay=1e-4, mask=decay_kernels)

Key paths carry no metadata; for a mask that reads metadata (or the whole
`Param`) use `param_mask`, which takes the same `(path, param)` predicate as
`Params.split`:

    optimizer = optax.adamw(1e-3, weight_decay=1e-4, mask=lambda p: param_mask(
        p, lambda path, param: param.metadata.get('decay', True)))

Pass the mask as a function (as above), not as a precomputed tree: optax then
builds it from whatever params it is given, so it stays right after the
trainable set changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from blox.params._container import Params
from blox.params._frozen_layers import zero_frozen_layers
from blox.params._param import Param
from blox.params._paths import Path, path_text

__all__ = ["param_mask", "value_and_grad"]

ValueAndGradFn = Callable[..., tuple[Any, Params, Params]]


def value_and_grad(
    loss_fn: Callable[..., tuple[Any, Any]], *, has_aux: bool = False
) -> ValueAndGradFn:
  """Makes `step(params, *args) -> (value, new_params, grads)` from `loss_fn`.

  `step` splits `params` into the trainable half and the rest, differentiates
  `loss_fn` with respect to the trainable half only, and returns:

  - `value`: the loss, or `(loss, aux)` with `has_aux=True`;
  - `new_params`: the non-trainable state returned by `loss_fn` merged with
    the trainable values given to `step` (unchanged: applying the gradients
    is the optimizer's job). It has the same tree structure as `params`;
  - `grads`: a `Params` holding exactly the trainable params, with the same
    tree structure as `params.split()[0]`, so it can be passed straight to
    `optimizer.update`. The frozen layers of stacked params (see
    `Params.freeze(where, layers=...)`) get zero gradients; the optimizer
    may still move them (weight decay), so put them back with
    `restore_frozen_layers` after its step.

  See the module docstring for a complete train step with optax.

  Args:
    loss_fn: `loss_fn(params, *args) -> (loss, params)`, or
      `loss_fn(params, *args) -> (loss, (aux, params))` with `has_aux=True`.
      `loss` must be a real scalar; `params` are the params after the
      forward pass (e.g. with advanced random stream counters).
    has_aux: whether `loss_fn` also returns auxiliary output.

  Raises (when `step` runs or is traced):
    TypeError: a trainable param holds integers, bools or PRNG keys (which
      have no gradient), or `loss_fn` does not return params in the expected
      place.
    ValueError: `loss_fn` returned params whose trainable paths differ from
      the input's (it created, removed, froze or unfroze a trainable param),
      or with another locked flag.
  """
  name = getattr(loss_fn, "__name__", repr(loss_fn))

  def step(params: Params, *args: Any) -> tuple[Any, Params, Params]:
    if not isinstance(params, Params):
      raise TypeError(
          f"value_and_grad({name}): the first argument must be Params, got"
          f" {type(params).__name__}."
      )
    trainable, rest = params.split()
    _check_differentiable(name, trainable)

    def differentiated(trainable: Params) -> tuple[Any, tuple[Any, Params]]:
      output = loss_fn(trainable.merge(rest), *args)
      loss, aux, new_params = _unpack(name, output, has_aux)
      _check_unchanged(name, trainable, new_params)
      return loss, (aux, new_params.split()[1])

    (loss, (aux, new_rest)), grads = jax.value_and_grad(differentiated, has_aux=True)(
        trainable
    )
    value = (loss, aux) if has_aux else loss
    return value, trainable.merge(new_rest), zero_frozen_layers(grads)

  return step


def _check_differentiable(name: str, trainable: Params) -> None:
  """Every trainable value must be float or complex: JAX cannot differentiate
  integers, bools or PRNG keys, and its own error names no param."""
  wrong = [
      f"{path_text(path)} ({param.value.dtype})"
      for path, param in trainable.items()
      if hasattr(param.value, "dtype")
      and not jnp.issubdtype(param.value.dtype, jnp.inexact)
  ]
  if wrong:
    raise TypeError(
        f"value_and_grad({name}): trainable params must hold float or complex"
        f" values to be differentiated, but {', '.join(wrong)} do not. Counters,"
        " integer state and PRNG keys are not trained: mark them trainable=False"
        " (e.g. params.set(path, trainable=False), or create them with"
        " trainable=False)."
    )


def _unpack(name: str, output: Any, has_aux: bool) -> tuple[Any, Any, Params]:
  """Takes `(loss, params)` or `(loss, (aux, params))` apart, checking the shape."""
  expected = "(loss, (aux, params))" if has_aux else "(loss, params)"
  if not isinstance(output, tuple) or len(output) != 2:
    raise TypeError(
        f"value_and_grad({name}): the loss function must return {expected}, got"
        f" {type(output).__name__}."
    )
  loss, rest = output
  aux = None
  if has_aux:
    if not isinstance(rest, tuple) or len(rest) != 2:
      raise TypeError(
          f"value_and_grad({name}, has_aux=True): the loss function must return"
          f" {expected}; its second output is {type(rest).__name__}, not an"
          " (aux, params) pair."
      )
    aux, rest = rest
  if not isinstance(rest, Params):
    hint = (
        " Pass has_aux=True if it returns (loss, (aux, params))."
        if not has_aux and isinstance(rest, tuple)
        else ""
    )
    raise TypeError(
        f"value_and_grad({name}): the loss function must return {expected}; got"
        f" {type(rest).__name__} where the params belong.{hint}"
    )
  return loss, aux, rest


def _check_unchanged(name: str, trainable: Params, new_params: Params) -> None:
  """The trainable set is fixed: its gradients must match the optimizer state."""
  if new_params.is_locked != trainable.is_locked:
    raise ValueError(
        f"value_and_grad({name}): the loss function returned params with"
        f" is_locked={new_params.is_locked}, but was given is_locked="
        f"{trainable.is_locked}; return the params the model gave back."
    )
  before = set(trainable)
  after = {path for path, param in new_params.items() if param.trainable}
  if before != after:
    added = sorted(after - before)
    removed = sorted(before - after)
    raise ValueError(
        f"value_and_grad({name}): the loss function changed the set of trainable"
        f" params (new: {added}, gone: {removed}). Create params and change"
        " trainable flags outside the differentiated step, e.g. at init."
    )


def param_mask(params: Params, predicate: Callable[[Path, Param], Any]) -> Params:
  """A tree of bools shaped like `params`: `predicate(path, param)` per param.

  For optax masks (`optax.masked`, `optax.adamw(mask=...)`) that depend on
  metadata or flags, which key paths do not carry.

  Example:
    >>> import jax.numpy as jnp
    >>> params = Params({('w',): Param(jnp.ones(2), metadata={'decay': False})})
    >>> param_mask(params, lambda path, p: p.metadata['decay'])[('w',)].value
    False
  """
  return params.map(lambda path, param: bool(predicate(path, param)))
