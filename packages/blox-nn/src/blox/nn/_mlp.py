"""`MLP` and `GatedMLP`: the feed-forward blocks of transformers.

`MLP` is `down(activation(up(x)))` (GPT-2, BERT); `GatedMLP` is
`down(activation(gate(x)) * up(x))` (SwiGLU with `jax.nn.silu` for Llama,
Mistral and Qwen; GeGLU with the tanh-approximate gelu for Gemma). Both are
made of `Linear` children named 'gate', 'up' and 'down', so their params sit
at `(*path, 'up', 'kernel')` and so on, and every product goes through
`blox.nn.contract` as a `Linear`'s does.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mlp = GatedMLP(graph.child('mlp'), 16, rng=rng, use_bias=False)
  >>> y, params = mlp(rng.seed(Params(), seed=0), jnp.ones((2, 4)))
  >>> y.shape, [(path[2], params[path].value.shape) for path in params if path[1] == 'mlp']
  ((2, 4), [('gate', (4, 16)), ('up', (4, 16)), ('down', (16, 4))])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax

from blox.graph import setting
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._layer import KernelLayer
from blox.nn._linear import Linear
from blox.params import SHARDING, Params

__all__ = ["GatedMLP", "MLP"]

# Metadata per child: 'gate', 'up' or 'down' -> that child's metadata.
ChildMetadata = Mapping[str, Mapping[str, Any] | None] | None
Activation = Callable[[jax.Array], jax.Array]


def _check_optional_size(value: Any, name: str, where: str) -> Any:
  """`value`, None or a positive int."""
  if value is not None:
    check_positive_int(value, f"{name} (or None)", where)
  return value


def _check_activation(value: Any, name: str, where: str) -> Any:
  """`value`, a callable `array -> array`."""
  if not callable(value):
    raise TypeError(
        f"{where}: {name} must be a function array -> array such as jax.nn.silu,"
        f" got {type(value).__name__}."
    )
  return value


def _check_per_child_form(value: Any, name: str, where: str) -> Any:
  """`value`, None or a mapping (its keys are checked against the children
  by the layer, which knows them)."""
  if value is not None and not isinstance(value, Mapping):
    raise TypeError(
        f"{where}: {name} must map child names to metadata, e.g. {name}={{'up':"
        f" {{{SHARDING!r}: (None, 'model')}}}}; got {type(value).__name__}."
    )
  return value


class _FeedForward(KernelLayer):
  """What both blocks share: the sizes, the per-child metadata and the call.

  A subclass names its children in `CHILDREN` (the last is 'down') and
  declares its `activation`; `_hidden` computes what goes into 'down'.
  """

  CHILDREN: ClassVar[tuple[str, ...]] = ()

  hidden_size: int = setting(
      kw_only=False, check=check_positive_int,
      doc="the width of the hidden layer (the outputs of 'up').")
  output_size: int | None = setting(
      default=None, kw_only=False, check=_check_optional_size,
      doc="the size of the last output axis; None: that of the inputs.")
  kernel_metadata: ChildMetadata = setting(
      default=None, check=_check_per_child_form,
      doc="the kernels' metadata per child: a mapping from child names to that"
      " child's kernel metadata, e.g. `{'up': {'sharding': (None, 'model')},"
      " 'down': {'sharding': ('model', None)}}`; children left out get none.",
  )
  bias_metadata: ChildMetadata = setting(
      default=None, check=_check_per_child_form, doc="the same for the biases.")

  def __post_init__(self) -> None:
    self._per_child()  # unknown child names are refused now, not at the first call
    # Sizes and options are set again at each call (`_configured`), so that
    # a setting changed after construction reaches the children; 'down's
    # width is then that of the inputs unless output_size is set.
    self._children = {
        name: Linear(
            self.graph.child(name), self.output_size or self.hidden_size, rng=self.rng)
        for name in self.CHILDREN
    }

  @property
  def up(self) -> Linear:
    """The child 'up', `[features, hidden_size]`."""
    return self._children["up"]

  @property
  def down(self) -> Linear:
    """The child 'down', `[hidden_size, output_size]`."""
    return self._children["down"]

  def _per_child(self) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(kernel metadata, bias metadata)` by child, checked against `CHILDREN`."""
    checked = []
    for name in ("kernel_metadata", "bias_metadata"):
      given = _check_per_child_form(getattr(self, name), name, self.where())
      given = {} if given is None else dict(given)
      unknown = sorted(set(given) - set(self.CHILDREN))
      if unknown:
        raise ValueError(
            f"{self.where()}: {name} maps the children {self.CHILDREN} to their"
            f" metadata, but got {unknown}; e.g. {name}={{'up': {{{SHARDING!r}:"
            f" (None, 'model')}}}}."
        )
      for child, entry in given.items():
        if entry is not None and not isinstance(entry, Mapping):
          raise TypeError(
              f"{self.where()}: {name}[{child!r}] must be a metadata mapping (or"
              f" None), got {type(entry).__name__}."
          )
      checked.append(given)
    return checked[0], checked[1]

  def _configured(self, name: str, output_size: int) -> Linear:
    """Child `name` with this layer's current settings and `output_size`."""
    kernels, biases = self._per_child()
    child = self._children[name]
    child.output_size = output_size
    child.rng, child.use_bias, child.precision = self.rng, self.use_bias, self.precision
    child.kernel_init, child.bias_init = self.kernel_init, self.bias_init
    child.kernel_metadata, child.bias_metadata = kernels.get(name), biases.get(name)
    child.param_dtype, child.dtype = self.param_dtype, self.dtype
    return child

  def _in_compute(self, x: jax.Array) -> jax.Array:
    """A child's outputs in the compute dtype (they come out in the policy's
    output dtype, when it has one): the activation is computed in it."""
    compute = self.dtypes().compute
    return x if compute is None else x.astype(compute)

  def _hidden(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    raise NotImplementedError  # each subclass says what goes into 'down'

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Applies the block to floating-point `inputs [..., features]`.

    Returns:
      `(outputs [..., output_size or features], params)`.
    """
    where = self.where()
    check_feature_axis(inputs, where)
    check_float_inputs(inputs, where)
    hidden, params = self._hidden(params, inputs)
    down = self._configured("down", self.output_size or inputs.shape[-1])
    return down(params, hidden)


class MLP(_FeedForward):
  """`down(activation(up(x)))`: two `Linear` children, 'up' then 'down'.

  Params `up/kernel [features, hidden_size]`, `up/bias [hidden_size]`,
  `down/kernel [hidden_size, output_size]` and `down/bias [output_size]`
  (the biases with `use_bias`), created in that order. The activation is
  computed in the compute dtype (`dtype`, else the policy's). The children
  take this layer's settings, set again at every call.

  Example: GPT-2's block, the tanh-approximate gelu (jax's default).
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph
    >>> from blox.params import Params
    >>> from blox.nn import Rng
    >>> graph = Graph('net')
    >>> rng = Rng(graph.child('rng'))
    >>> mlp = MLP(graph.child('mlp'), 12, rng=rng)
    >>> y, params = mlp(rng.seed(Params(), seed=0), jnp.ones((2, 3)))
    >>> y.shape, params[('net', 'mlp', 'up', 'kernel')].value.shape
    ((2, 3), (3, 12))
  """

  CHILDREN = ("up", "down")

  activation: Activation = setting(
      default=jax.nn.gelu, check=_check_activation,
      doc="the function applied to the outputs of 'up'.")

  def _hidden(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    up, params = self._configured("up", self.hidden_size)(params, inputs)
    return self.activation(self._in_compute(up)), params


class GatedMLP(_FeedForward):
  """`down(activation(gate(x)) * up(x))`: three `Linear` children.

  Params `gate/kernel` and `up/kernel` `[features, hidden_size]`,
  `down/kernel [hidden_size, output_size]` (and their biases with
  `use_bias`), created in the order gate, up, down. SwiGLU is the default
  (`activation=jax.nn.silu`); GeGLU is
  `activation=functools.partial(jax.nn.gelu, approximate=True)`. The
  activation and the product are computed in the compute dtype (`dtype`,
  else the policy's). The children take this layer's settings, set again at
  every call.

  Example: a Llama MLP, without biases, sharded over 'model'.
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph
    >>> from blox.params import Params
    >>> from blox.nn import Rng
    >>> graph = Graph('net')
    >>> rng = Rng(graph.child('rng'))
    >>> into = {'sharding': (None, 'model')}
    >>> mlp = GatedMLP(graph.child('mlp'), 8, rng=rng, use_bias=False, kernel_metadata={
    ...     'gate': into, 'up': into, 'down': {'sharding': ('model', None)}})
    >>> y, params = mlp(rng.seed(Params(), seed=0), jnp.ones((2, 3)))
    >>> params[('net', 'mlp', 'down', 'kernel')].sharding
    ('model', None)
  """

  CHILDREN = ("gate", "up", "down")

  activation: Activation = setting(
      default=jax.nn.silu, check=_check_activation,
      doc="the function applied to the outputs of 'gate'.")

  @property
  def gate(self) -> Linear:
    """The child 'gate', `[features, hidden_size]`."""
    return self._children["gate"]

  def _hidden(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    gate, params = self._configured("gate", self.hidden_size)(params, inputs)
    up, params = self._configured("up", self.hidden_size)(params, inputs)
    return self.activation(self._in_compute(gate)) * self._in_compute(up), params
