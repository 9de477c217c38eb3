"""`contract`: the one path by which every layer multiplies by a weight.

`Linear`, `Conv`/`ConvTranspose`, the attention projections and products,
`Embed.attend` and the recurrent cells all compute their products here, as
an einsum equation or a convolution. That makes it the one seam for what
changes a contraction in every layer at once: an output sharding, a
low-rank adapter beside the weight, a quantized weight dequantized on the
fly. Such a change is a `ContractionHook`, installed on one module
(`set_contraction_hook`) or around a traced function (`contraction_hooks`).

A hook is `hook(contraction, inputs, weight) -> outputs`. It sees what is
being computed (`Contraction`: the module, the params it was called with,
the weight's name, the equation or convolution, the precision) and calls
`contraction.compute(inputs, weight)` for the product itself (which runs
the remaining hooks, then the product), changing the operands before or
the result after.

Example:
  >>> import jax.numpy as jnp
  >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
  >>> contract(x, w, '...i,io->...o').shape
  (2, 4)
  >>> def doubled(contraction, inputs, weight):
  ...   return 2 * contraction.compute(inputs, weight)
  >>> with contraction_hooks(doubled):
  ...   contract(x, w, '...i,io->...o')[0].tolist()
  [6.0, 6.0, 6.0, 6.0]
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.nn._out_sharding import ShardingConflict, conv_out_sharding, einsum_out_sharding
from blox.params import Params, path_text

__all__ = [
    "ConvDimensions",
    "Contraction",
    "ContractionHook",
    "contract",
    "contraction_hooks",
    "set_contraction_hook",
]


@dataclasses.dataclass(frozen=True)
class ConvDimensions:
  """A convolution as `jax.lax.conv_general_dilated` takes it, batch axis first.

  Inputs are `(batch, *spatial, channels)` and kernels `(*spatial, in, out)`
  (channels last: 'NHWC' and 'HWIO' in the 2-D case).
  """

  strides: tuple[int, ...]
  padding: str | Sequence[tuple[int, int]]
  input_dilation: tuple[int, ...]
  kernel_dilation: tuple[int, ...]
  feature_group_count: int = 1

  def dimension_numbers(self) -> jax.lax.ConvDimensionNumbers:
    n = len(self.strides)
    spatial = tuple(range(1, n + 1))
    return jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, n + 1) + spatial,
        rhs_spec=(n + 1, n) + tuple(range(n)),
        out_spec=(0, n + 1) + spatial,
    )


class ContractionHook(Protocol):
  """`hook(contraction, inputs, weight) -> outputs`; see the module docstring."""

  def __call__(self, contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class Contraction:
  """One product of inputs by a weight, as hooks see it.

  Attributes:
    equation: the einsum equation `'inputs,weight->outputs'`, or None for a
      convolution.
    conv: the convolution, or None for an einsum.
    module: the layer contracting, or None (a pure function such as
      `dot_product_attention`).
    params: the params the layer was called with (to read an adapter's or a
      quantization scale's values), or None.
    weight_name: the weight's name under the module's node, e.g.
      `('kernel',)` or `('query', 'kernel')`; None when the second operand is
      no param (attention's keys and values).
    precision: as for `jax.lax.dot_general`.
    preferred_element_type: the accumulation and output dtype, or None.
  """

  equation: str | None
  conv: ConvDimensions | None
  module: Module | None
  params: Params | None
  weight_name: tuple[str, ...] | None
  precision: jax.lax.PrecisionLike
  preferred_element_type: Any
  remaining: tuple[ContractionHook, ...] = ()

  def weight_path(self) -> tuple[str, ...] | None:
    """The weight's full param path, when it is a module's param."""
    if self.module is None or self.weight_name is None:
      return None
    return self.module.param_path(self.weight_name)

  def compute(self, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    """The product: the remaining hooks, then the einsum or convolution."""
    if self.remaining:
      hook, rest = self.remaining[0], self.remaining[1:]
      return hook(dataclasses.replace(self, remaining=rest), inputs, weight)
    if self.conv is not None:
      conv = self.conv
      out_sharding = conv_out_sharding(inputs, weight)
      extra: dict[str, Any] = {} if out_sharding is None else {"out_sharding": out_sharding}
      return jax.lax.conv_general_dilated(
          inputs, weight, conv.strides, conv.padding,
          lhs_dilation=conv.input_dilation, rhs_dilation=conv.kernel_dilation,
          dimension_numbers=conv.dimension_numbers(),
          feature_group_count=conv.feature_group_count, precision=self.precision,
          preferred_element_type=self.preferred_element_type, **extra,
      )
    assert self.equation is not None  # contract() gives one of the two
    # On Explicit mesh axes the output's sharding is part of its type and must
    # be said where the operands leave it open (see _out_sharding); None
    # elsewhere, so the product is exactly the one without a mesh.
    try:
      out_sharding = einsum_out_sharding(self.equation, inputs, weight)
    except ShardingConflict as conflict:
      raise ValueError(self._conflict_message(conflict)) from None
    return jnp.einsum(
        self.equation, inputs, weight, precision=self.precision,
        preferred_element_type=self.preferred_element_type, out_sharding=out_sharding,
    )


  def _conflict_message(self, conflict: ShardingConflict) -> str:
    """The error for a dimension the operands split over different mesh axes."""
    where = self.module.where() if self.module is not None else "contract"
    path = self.weight_path()
    logical = None
    if path is not None and self.params is not None and path in self.params:
      names = tuple(self.params[path].sharding or ())
      logical = names[conflict.weight_dim] if conflict.weight_dim < len(names) else None
    weight = f"the param {path_text(path)}" if path is not None else "the second operand"
    axis = f" (logical axis {logical!r})" if logical is not None else ""
    fix = "Lay out one operand like the other first (blox.parallel.constrain or jax.sharding.reshard)."
    if logical is not None:
      fix = (
          f"Add the rule ({logical!r}, {conflict.inputs_axes!r}) so that the weight is"
          f" split like the inputs, or l{fix[1:]}"
      )
    return (
        f"{where}: {self.equation!r}: output dimension {conflict.out_dim} is split over"
        f" mesh axis {conflict.inputs_axes!r} in the inputs but over"
        f" {conflict.weight_axes!r} in {weight}, dimension {conflict.weight_dim}{axis}:"
        f" the output's sharding is ambiguous. {fix}"
    )


_AMBIENT: contextvars.ContextVar[tuple[ContractionHook, ...]] = contextvars.ContextVar(
    "blox_contraction_hooks", default=()
)
_HOOK_ATTRIBUTE = "_blox_contraction_hook"


@contextlib.contextmanager
def contraction_hooks(*hooks: ContractionHook) -> Iterator[None]:
  """Applies `hooks` to every contraction traced inside the `with` block.

  The first hook is the outermost; hooks of an enclosing block run before
  these, and a module's own hook (`set_contraction_hook`) runs last. Hooks
  act while a function is traced: wrap the traced body (inside `jax.jit`),
  not the call of an already compiled function.
  """
  token = _AMBIENT.set(_AMBIENT.get() + hooks)
  try:
    yield
  finally:
    _AMBIENT.reset(token)


def set_contraction_hook(module: Module, hook: ContractionHook | None) -> None:
  """Installs `hook` on every contraction of `module` (None removes it).

  The hook is a plain attribute of the module object, like its settings:
  functions traced after the change see it, a compiled function does not.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph
    >>> from blox.params import Params
    >>> from blox.nn import Linear, Rng
    >>> graph = Graph('net')
    >>> rng = Rng(graph.child('rng'))
    >>> linear = Linear(graph.child('out'), 2, rng=rng, use_bias=False)
    >>> params = rng.seed(Params(), seed=0)
    >>> y, params = linear(params, jnp.ones(3))
    >>> set_contraction_hook(linear, lambda c, x, w: c.compute(x, jnp.zeros_like(w)))
    >>> linear(params, jnp.ones(3))[0].tolist()
    [0.0, 0.0]
  """
  if hook is None:
    module.__dict__.pop(_HOOK_ATTRIBUTE, None)
  else:
    setattr(module, _HOOK_ATTRIBUTE, hook)


def contract(
    inputs: jax.Array,
    weight: jax.Array,
    equation: str | None = None,
    *,
    conv: ConvDimensions | None = None,
    module: Module | None = None,
    params: Params | None = None,
    weight_name: str | tuple[str, ...] | None = None,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
  """`inputs` contracted with `weight` by an einsum `equation` or a convolution.

  Args:
    inputs: the first operand.
    weight: the second operand (a layer's kernel, an embedding table, or
      attention's keys and values).
    equation: an einsum equation with two operands; give this or `conv`.
    conv: a `ConvDimensions`, for `jax.lax.conv_general_dilated` on inputs
      `(batch, *spatial, channels)` and a kernel `(*spatial, in, out)`.
    module: the layer that contracts, for hooks and errors.
    params: the params the layer was called with, for hooks.
    weight_name: the weight's name under the module's node.
    precision: as for `jax.lax.dot_general`.
    preferred_element_type: the accumulation and output dtype; None: the
      operands' promoted dtype.

  Returns:
    The product, through the ambient hooks (`contraction_hooks`) and the
    module's own hook (`set_contraction_hook`), if any.
  """
  if (equation is None) == (conv is None):
    raise TypeError("contract: give exactly one of an einsum `equation` and a `conv`.")
  hooks = _AMBIENT.get()
  own = None if module is None else module.__dict__.get(_HOOK_ATTRIBUTE)
  if own is not None:
    hooks = hooks + (own,)
  name = (weight_name,) if isinstance(weight_name, str) else weight_name
  contraction = Contraction(
      equation, conv, module, params, name, precision, preferred_element_type, hooks
  )
  return contraction.compute(inputs, weight)

