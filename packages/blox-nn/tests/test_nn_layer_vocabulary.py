"""The argument vocabulary every layer shares.

Sizes are positional and everything else keyword-only; every param has an
init and a metadata argument; `precision` is set once, in the constructor;
integer and boolean inputs are refused with an error that names the layer and
says to cast; every constructor argument is kept as an attribute of its name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module
from blox.nn import (
    GRU,
    LSTM,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dropout,
    Embed,
    LayerNorm,
    Linear,
    RMSNorm,
    Rng,
    Sequential,
    initializers,
)
from blox.params import SHARDING, Params

Make = Callable[..., Module]


def _setup() -> tuple[Graph, Rng, Params]:
  graph = Graph("vocab")
  rng = Rng(graph.child("rng"))
  return graph, rng, rng.seed(Params(), seed=0)


def _run(layer: Module, params: Params, x: jax.Array) -> tuple[Any, Params]:
  """One call of `layer`: one step for the recurrent cells, evaluation for
  `BatchNorm` (so its running statistics keep their initial values)."""
  if isinstance(layer, LSTM):
    lstm_state, params = layer.initial_state(params, x)
    return layer(params, x, lstm_state)
  if isinstance(layer, GRU):
    gru_state, params = layer.initial_state(params, x)
    return layer(params, x, gru_state)
  if isinstance(layer, BatchNorm):
    return layer(params, x, is_training=False)
  return layer(params, x)


# (name, make(graph, rng, **options), float inputs, the params it creates)
_LAYERS: list[tuple[str, Make, jax.Array, tuple[str, ...]]] = [
    ("Linear", lambda g, rng, **o: Linear(g, 3, rng=rng, **o), jnp.ones((2, 4)), ("kernel", "bias")),
    ("Conv", lambda g, rng, **o: Conv(g, 3, (2,), rng=rng, **o), jnp.ones((2, 5, 4)), ("kernel", "bias")),
    ("ConvTranspose", lambda g, rng, **o: ConvTranspose(g, 3, (2,), rng=rng, **o), jnp.ones((2, 5, 4)), ("kernel", "bias")),
    ("LSTM", lambda g, rng, **o: LSTM(g, 3, rng=rng, **o), jnp.ones((2, 4)), ("kernel", "recurrent_kernel", "bias")),
    ("GRU", lambda g, rng, **o: GRU(g, 3, rng=rng, **o), jnp.ones((2, 4)), ("kernel", "recurrent_kernel", "bias")),
    ("LayerNorm", lambda g, rng, **o: LayerNorm(g, **o), jnp.ones((2, 4)), ("scale", "bias")),
    ("RMSNorm", lambda g, rng, **o: RMSNorm(g, **o), jnp.ones((2, 4)), ("scale",)),
    ("BatchNorm", lambda g, rng, **o: BatchNorm(g, **o), jnp.ones((2, 4)), ("scale", "bias", "running_mean", "running_var")),
]
_IDS = [name for name, *_ in _LAYERS]


@pytest.mark.parametrize(("name", "make", "x", "names"), _LAYERS, ids=_IDS)
def test_every_param_takes_its_own_init_and_metadata(name: str, make: Make, x: jax.Array, names: tuple[str, ...]) -> None:
  graph, rng, params = _setup()
  options: dict[str, Any] = {}
  for i, param in enumerate(names):
    options[f"{param}_init"] = initializers.constant(float(i + 2))
    options[f"{param}_metadata"] = {SHARDING: (f"axis_{param}",), "tag": param}
  layer = make(graph.child("layer"), rng, **options)
  _, params = _run(layer, params, x)
  for i, param in enumerate(names):
    created = params[("vocab", "layer", param)]
    np.testing.assert_array_equal(created.value, float(i + 2))
    assert created.metadata["tag"] == param
    assert created.sharding == (f"axis_{param}",)


@pytest.mark.parametrize(("name", "make", "x", "names"), _LAYERS, ids=_IDS)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_inputs_are_refused(name: str, make: Make, x: jax.Array, names: tuple[str, ...], dtype: Any) -> None:
  graph, rng, params = _setup()
  layer = make(graph.child("layer"), rng)
  message = rf"^{name} 'vocab/layer': inputs must be floating point, got dtype {jnp.dtype(dtype)}; cast them first"
  with pytest.raises(TypeError, match=message):
    _run(layer, params, x.astype(dtype))


_WITH_PRECISION = [case for case in _LAYERS if case[0] in ("Linear", "Conv", "ConvTranspose", "LSTM", "GRU")]


@pytest.mark.parametrize(("name", "make", "x", "names"), _WITH_PRECISION, ids=[c[0] for c in _WITH_PRECISION])
def test_precision_in_the_constructor_reaches_every_product(name: str, make: Make, x: jax.Array, names: tuple[str, ...]) -> None:
  graph, rng, params = _setup()
  layer = make(graph.child("layer"), rng, precision=jax.lax.Precision.HIGHEST)
  _, params = _run(layer, params, x)
  jaxpr = str(jax.make_jaxpr(lambda p: _run(layer, p, x)[0])(params))
  products = jaxpr.count("dot_general[") + jaxpr.count("conv_general_dilated[")
  expected = {"LSTM": 2, "GRU": 3}.get(name, 1)
  assert products == expected, jaxpr
  assert jaxpr.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == products, jaxpr
  default = make(graph.child("default"), rng)
  _, params = _run(default, params, x)
  assert "HIGHEST" not in str(jax.make_jaxpr(lambda p: _run(default, p, x)[0])(params))


def test_embed_attend_uses_the_constructor_precision() -> None:
  graph, rng, params = _setup()
  embed = Embed(graph.child("embed"), 5, 4, rng=rng, precision=jax.lax.Precision.HIGHEST)
  jaxpr = str(jax.make_jaxpr(lambda p: embed.attend(p, jnp.ones((2, 4)))[0])(params))
  assert "precision=(Precision.HIGHEST, Precision.HIGHEST)" in jaxpr


def test_embed_attend_refuses_integer_inputs() -> None:
  graph, rng, params = _setup()
  embed = Embed(graph.child("embed"), 5, 4, rng=rng)
  with pytest.raises(TypeError, match=r"^Embed 'vocab/embed': inputs must be floating point.*cast them first"):
    embed.attend(params, jnp.ones((2, 4), jnp.int32))


# Options given positionally, as the old signatures allowed.
_POSITIONAL: list[tuple[str, Callable[[Graph, Rng], object]]] = [
    ("Linear", lambda g, rng: Linear(g, 4, rng)),  # type: ignore[call-arg]  # the misuse under test
    ("Dropout", lambda g, rng: Dropout(g, 0.5, rng)),  # type: ignore[call-arg]  # the misuse under test
    ("Embed", lambda g, rng: Embed(g, 4, 3, rng)),  # type: ignore[call-arg]  # the misuse under test
    ("Conv", lambda g, rng: Conv(g, 4, (3,), rng)),  # type: ignore[call-arg]  # the misuse under test
    ("ConvTranspose", lambda g, rng: ConvTranspose(g, 4, (3,), rng)),  # type: ignore[call-arg]  # the misuse under test
    ("LSTM", lambda g, rng: LSTM(g, 4, rng)),  # type: ignore[call-arg]  # the misuse under test
    ("GRU", lambda g, rng: GRU(g, 4, rng)),  # type: ignore[call-arg]  # the misuse under test
    ("LayerNorm", lambda g, rng: LayerNorm(g, 1e-3)),  # type: ignore[call-arg]  # the misuse under test
    ("RMSNorm", lambda g, rng: RMSNorm(g, 1e-3)),  # type: ignore[call-arg]  # the misuse under test
    ("BatchNorm", lambda g, rng: BatchNorm(g, 0.9)),  # type: ignore[call-arg]  # the misuse under test
]


@pytest.mark.parametrize(("name", "make"), _POSITIONAL, ids=[n for n, _ in _POSITIONAL])
def test_options_given_positionally_are_refused(name: str, make: Callable[[Graph, Rng], object]) -> None:
  graph, rng, _ = _setup()
  with pytest.raises(TypeError, match="positional argument"):
    make(graph.child("layer"), rng)


_ALL: list[tuple[str, Callable[[Graph, Rng], Module]]] = [
    ("Linear", lambda g, rng: Linear(g, 4, rng=rng)),
    ("Dropout", lambda g, rng: Dropout(g, 0.5, rng=rng)),
    ("Embed", lambda g, rng: Embed(g, 4, 3, rng=rng)),
    ("Conv", lambda g, rng: Conv(g, 4, (3,), rng=rng)),
    ("ConvTranspose", lambda g, rng: ConvTranspose(g, 4, (3,), rng=rng)),
    ("LSTM", lambda g, rng: LSTM(g, 4, rng=rng)),
    ("GRU", lambda g, rng: GRU(g, 4, rng=rng)),
    ("LayerNorm", lambda g, rng: LayerNorm(g)),
    ("RMSNorm", lambda g, rng: RMSNorm(g)),
    ("BatchNorm", lambda g, rng: BatchNorm(g)),
    ("Sequential", lambda g, rng: Sequential(g, [jnp.tanh])),
]


@pytest.mark.parametrize(("name", "make"), _ALL, ids=[n for n, _ in _ALL])
def test_every_constructor_argument_is_an_attribute_of_its_name(name: str, make: Callable[[Graph, Rng], Module]) -> None:
  graph, rng, _ = _setup()
  layer = make(graph.child("layer"), rng)
  parameters = list(inspect.signature(type(layer).__init__).parameters)[2:]  # self, graph
  missing = [p for p in parameters if not hasattr(layer, p)]
  assert not missing, f"{name} keeps no attribute for {missing}"


# The vocabulary of the declared settings, over every public module class.
_SIZES = {
    "output_size", "hidden_size", "num_heads", "num_embeddings", "kernel_size", "rate",
    "layers",
}
_RETIRED = {
    "out_features", "qkv_features", "features", "embedding_size", "output_features",
    "key_source", "num_outputs",
}
# Settings that map a projection (or a norm) name to that projection's metadata.
_PER_PROJECTION = {"projection_kernel_metadata", "projection_bias_metadata", "qk_norm_metadata"}


def _public_module_classes() -> list[type[Module]]:
  import blox.nn as nn

  classes = [getattr(nn, name) for name in nn.__all__]
  return [c for c in classes if isinstance(c, type) and issubclass(c, Module)]


@pytest.mark.parametrize("cls", _public_module_classes(), ids=lambda c: c.__name__)
def test_every_public_layer_speaks_one_vocabulary(cls: type[Module]) -> None:
  settings = cls.__blox_settings__  # type: ignore[attr-defined]  # set on every module class
  signature = inspect.signature(cls)
  names = list(signature.parameters)
  assert names[0] == "graph", names
  assert not _RETIRED & set(names), f"{cls.__name__} uses a retired name: {_RETIRED & set(names)}"
  for parameter in list(signature.parameters.values())[1:]:
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
      assert parameter.name in _SIZES, f"{cls.__name__}: only sizes are positional, not {parameter.name!r}"
    else:
      assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (cls.__name__, parameter)
  assert set(names[1:]) == set(settings), f"{cls.__name__}: every argument is a declared setting"
  for name in names:
    if name.endswith("_metadata") and name not in ("kernel_metadata", "bias_metadata"):
      # One metadata dict per param (`<param>_metadata`) or a per-projection map.
      assert name in _PER_PROJECTION or name.removesuffix("_metadata") + "_init" in names or (
          name.removesuffix("_metadata") in ("embedding", "scale", "recurrent_kernel",
                                             "running_mean", "running_var")
      ), f"{cls.__name__}: {name!r} names no param of its own"
  if any(name.endswith("_init") for name in names):
    # A layer that creates params chooses their dtype by `param_dtype`.
    assert "param_dtype" in names, f"{cls.__name__} creates params but takes no param_dtype"
  if "dtype" in names:
    assert "param_dtype" in names, f"{cls.__name__}: `dtype` is the compute dtype, beside param_dtype"
  if any(name in names for name in ("kernel_init", "embedding_init")):
    assert "rng" in names, f"{cls.__name__} initialises at random, so takes rng"
