"""Several contraction hooks on one module, each on some of its weights, in a fixed order.

`blox.nn.set_contraction_hook` installs one hook per module. Adapters
(LoRA) and weight formats (quantization) each want theirs on the same
module, and QLoRA wants both: `add_hook` keeps an ordered chain on the
module and installs it as the module's one hook. A hook of a lower `order`
runs first (outermost): LoRA (order 0) adds its low-rank path around
whatever computes the base product, which a quantized weight (order 10)
dequantizes.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Linear, Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> linear = Linear(graph.child('out'), 2, rng=rng, use_bias=False)
  >>> y, params = linear(rng.seed(Params(), seed=0), jnp.ones(3))
  >>> add_hook(linear, lambda c, x, w: c.compute(x, w) + 1.0, order=0, weights=[('kernel',)])
  >>> add_hook(linear, lambda c, x, w: c.compute(x, w * 0.0), order=10, weights=[('kernel',)])
  >>> linear(params, jnp.ones(3))[0].tolist()
  [1.0, 1.0]
  >>> remove_hooks(linear, order=0); linear(params, jnp.ones(3))[0].tolist()
  [0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax

from blox.graph import Module
from blox.nn import Contraction, ContractionHook, set_contraction_hook

__all__ = ["HookChain", "add_hook", "hooks_of", "hooks_revision", "remove_hooks"]

_CHAIN = "_blox_models_hook_chain"
# Counts every change of any module's chain: programs cached per model
# object (`generate`'s) key on it, since the chains change models in place.
_revision = 0


def hooks_revision() -> int:
  """A number that changes whenever `add_hook` or `remove_hooks` changes a chain.

  Example:
    >>> isinstance(hooks_revision(), int)
    True
  """
  return _revision


def _changed() -> None:
  global _revision
  _revision += 1


@dataclasses.dataclass
class HookChain:
  """The hooks of one module: `(order, weight names or None for all, hook)`."""

  entries: list[tuple[int, frozenset[tuple[str, ...]] | None, ContractionHook]] = dataclasses.field(
      default_factory=list)

  def __call__(self, contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    mine = tuple(
        hook for _, names, hook in self.entries
        if names is None or contraction.weight_name in names)
    chained = dataclasses.replace(contraction, remaining=mine + contraction.remaining)
    return chained.compute(inputs, weight)


def hooks_of(module: Module) -> HookChain | None:
  """The module's chain, if `add_hook` gave it one."""
  chain: Any = module.__dict__.get(_CHAIN)
  return chain if isinstance(chain, HookChain) else None


def add_hook(
    module: Module, hook: ContractionHook, *, order: int,
    weights: Iterable[tuple[str, ...]] | None = None,
) -> None:
  """Adds `hook` to `module`'s chain, on the contractions of `weights`
  (weight names, e.g. `[('kernel',)]` or `[('query', 'kernel')]`; None: all)."""
  chain = hooks_of(module)
  if chain is None:
    chain = HookChain()
    module.__dict__[_CHAIN] = chain
    set_contraction_hook(module, chain)
  names = None if weights is None else frozenset(tuple(name) for name in weights)
  chain.entries.append((order, names, hook))
  chain.entries.sort(key=lambda entry: entry[0])
  _changed()


def remove_hooks(module: Module, *, order: int) -> None:
  """Removes `module`'s hooks of `order` (and the chain once it is empty)."""
  chain = hooks_of(module)
  if chain is None:
    return
  chain.entries[:] = [entry for entry in chain.entries if entry[0] != order]
  _changed()
  if not chain.entries:
    del module.__dict__[_CHAIN]
    set_contraction_hook(module, None)
