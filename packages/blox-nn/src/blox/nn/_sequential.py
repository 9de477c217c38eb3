"""`Sequential`: layers and plain functions applied one after another.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Dropout, Linear, Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mlp = Sequential(graph.child('mlp'), [
  ...     Linear(graph.child('hidden'), 8, rng=rng),
  ...     jax.nn.relu,
  ...     Dropout(graph.child('dropout'), 0.1, rng=rng),
  ...     Linear(graph.child('out'), 2, rng=rng),
  ... ])
  >>> y, params = mlp(rng.seed(Params(), seed=0), jnp.ones((3, 4)), is_training=False)
  >>> y.shape
  (3, 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from blox.graph import Module, setting
from blox.params import Params

__all__ = ["Sequential"]


def _keywords(module: Module) -> frozenset[str] | None:
  """The keyword arguments `module.__call__` accepts; None means "any" (**kwargs)."""
  if isinstance(module, Sequential):
    # Its own signature says **kwargs, but it refuses what none of its layers takes.
    return module.accepted_keywords
  try:
    # The bound `__call__`, not the module: a module class's own signature
    # (what `inspect.signature(module)` may fall back to) is its constructor's.
    signature = inspect.signature(module.__call__)
  except (TypeError, ValueError):
    return None  # No readable signature: let the module decide at call time.
  names = []
  for parameter in signature.parameters.values():
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
      return None
    if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
      names.append(parameter.name)
  # The first two arguments are filled positionally with params and inputs.
  positional = [
      p.name for p in signature.parameters.values()
      if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  ][:2]
  return frozenset(n for n in names if n not in positional)


def _check_layers(value: Any, name: str, where: str) -> tuple[Module | Callable[[Any], Any], ...]:
  """`value` as a tuple; raises TypeError unless it is a sequence of callables."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise TypeError(
        f"{where}: {name} must be a list of modules and functions, got {type(value).__name__}."
    )
  for i, layer in enumerate(value):
    if not callable(layer):
      raise TypeError(
          f"{where}: layer {i} is a {type(layer).__name__}, which is neither a Module"
          " nor a callable."
      )
  return tuple(value)


class Sequential(Module):
  """Applies `layers` in order, threading params through the modules.

  A layer that is a `Module` is called as `x, params = layer(params, x,
  **kwargs)`; any other callable (such as `jax.nn.relu`) as `x = layer(x)`.

  Keyword arguments given to the call (such as `is_training=False`) go to
  every module whose `__call__` has a parameter of that name, or takes
  `**kwargs`; other modules and plain functions never see them. A nested
  `Sequential` gets the ones in its `accepted_keywords`. Signatures are read
  once, at construction (and again after `layers` is changed). A keyword that no layer accepts raises
  `TypeError`, so that a misspelt `is_trainig=False` does not pass unnoticed.

  The layers are modules bound to graph nodes of their own (anywhere in the
  graph); `Sequential` itself owns no params. With no layers it returns its
  inputs unchanged.
  """

  layers: Sequence[Module | Callable[[Any], Any]] = setting(
      kw_only=False, check=_check_layers,
      doc="modules and plain single-argument functions, in order.")

  def __post_init__(self) -> None:
    self._accepts_of: tuple[tuple[Any, ...], tuple[frozenset[str] | None, ...]] | None = None
    self._accepts()  # refuses the container among its own layers now

  def _accepts(self) -> tuple[frozenset[str] | None, ...]:
    """What each layer accepts (see `_keywords`; a function, nothing).

    Read once per list of layers, and again when `layers` is changed.
    """
    layers = tuple(self.layers)
    cached = self._accepts_of
    if cached is not None and len(cached[0]) == len(layers) and all(
        a is b for a, b in zip(cached[0], layers)):
      return cached[1]
    for i, layer in enumerate(layers):
      if layer is self:
        raise ValueError(f"{self.where()}: layer {i} is the Sequential itself.")
    accepts = tuple(
        _keywords(layer) if isinstance(layer, Module) else frozenset() for layer in layers)
    self._accepts_of = (layers, accepts)
    return accepts

  @property
  def accepted_keywords(self) -> frozenset[str] | None:
    """The keywords some layer accepts, or None when a layer takes `**kwargs`.

    A `Sequential` nested in another one is given only these.
    """
    accepts = self._accepts()
    if any(a is None for a in accepts):
      return None
    return frozenset().union(*(a for a in accepts if a is not None))

  def __len__(self) -> int:
    return len(self.layers)

  def __call__(self, params: Params, inputs: Any, **kwargs: Any) -> tuple[Any, Params]:
    """Runs the layers on `inputs`; returns `(outputs, params)`."""
    all_accepts = self._accepts()
    if kwargs:
      unused = sorted(
          name for name in kwargs
          if not any(a is None or name in a for a in all_accepts)
      )
      if unused:
        raise TypeError(
            f"{self.where()}: no layer accepts the keyword"
            f" argument(s) {unused}; remove them or check the spelling."
        )
    x = inputs
    for i, (layer, accepts) in enumerate(zip(self.layers, all_accepts)):
      if not isinstance(layer, Module):
        x = layer(x)
        continue
      extra = kwargs if accepts is None else {k: v for k, v in kwargs.items() if k in accepts}
      result = layer(params, x, **extra)
      if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params)):
        raise TypeError(
            f"{self.where()}: layer {i} ({layer.where()}) must return (outputs,"
            f" params), got {type(result).__name__}."
        )
      x, params = result
    return x, params
