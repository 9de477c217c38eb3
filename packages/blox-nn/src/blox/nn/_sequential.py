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

from blox.graph import Graph, Module
from blox.params import Params

__all__ = ["Sequential"]


def _keywords(module: Module) -> frozenset[str] | None:
  """The keyword arguments `module.__call__` accepts; None means "any" (**kwargs)."""
  if isinstance(module, Sequential):
    # Its own signature says **kwargs, but it refuses what none of its layers takes.
    return module.accepted_keywords
  try:
    signature = inspect.signature(module)
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


class Sequential(Module):
  """Applies `layers` in order, threading params through the modules.

  A layer that is a `Module` is called as `x, params = layer(params, x,
  **kwargs)`; any other callable (such as `jax.nn.relu`) as `x = layer(x)`.

  Keyword arguments given to the call (such as `is_training=False`) go to
  every module whose `__call__` has a parameter of that name, or takes
  `**kwargs`; other modules and plain functions never see them. A nested
  `Sequential` gets the ones in its `accepted_keywords`. Signatures are read
  once, at construction. A keyword that no layer accepts raises
  `TypeError`, so that a misspelt `is_trainig=False` does not pass unnoticed.

  The layers are modules bound to graph nodes of their own (anywhere in the
  graph); `Sequential` itself owns no params. With no layers it returns its
  inputs unchanged.

  Args:
    graph: the node this container binds to.
    layers: modules and plain single-argument functions, in order.
  """

  def __init__(self, graph: Graph, layers: Sequence[Module | Callable[[Any], Any]]) -> None:
    super().__init__(graph)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
      raise TypeError(
          f"{self.where()}: layers must be a list of modules and"
          f" functions, got {type(layers).__name__}."
      )
    for i, layer in enumerate(layers):
      if not callable(layer):
        raise TypeError(
            f"{self.where()}: layer {i} is a {type(layer).__name__},"
            " which is neither a Module nor a callable."
        )
      if layer is self:
        raise ValueError(f"{self.where()}: layer {i} is the Sequential itself.")
    self.layers: tuple[Module | Callable[[Any], Any], ...] = tuple(layers)
    self._accepts: tuple[frozenset[str] | None, ...] = tuple(
        _keywords(layer) if isinstance(layer, Module) else frozenset() for layer in self.layers
    )

  @property
  def accepted_keywords(self) -> frozenset[str] | None:
    """The keywords some layer accepts, or None when a layer takes `**kwargs`.

    A `Sequential` nested in another one is given only these.
    """
    if any(a is None for a in self._accepts):
      return None
    return frozenset().union(*(a for a in self._accepts if a is not None))

  def __len__(self) -> int:
    return len(self.layers)

  def __call__(self, params: Params, inputs: Any, **kwargs: Any) -> tuple[Any, Params]:
    """Runs the layers on `inputs`; returns `(outputs, params)`."""
    if kwargs:
      unused = sorted(
          name for name in kwargs
          if not any(a is None or name in a for a in self._accepts)
      )
      if unused:
        raise TypeError(
            f"{self.where()}: no layer accepts the keyword"
            f" argument(s) {unused}; remove them or check the spelling."
        )
    x = inputs
    for i, (layer, accepts) in enumerate(zip(self.layers, self._accepts)):
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
