"""Tests of `Conv` and `ConvTranspose` against direct `jax.lax` references."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import Conv, ConvTranspose, Rng
from blox.nn._contract import Contraction, ConvDimensions, contraction_hooks
from blox.params import SHARDING, Params

_names = itertools.count()


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)

# The reference layouts, spelled out as lax strings.
_LAYOUT = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _numpy_init(key: Any, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
  # Random values without jax.random: compiling a JAX sampler for every new
  # shape would dominate the run time of these tests.
  del key
  return jnp.asarray(np.random.default_rng(len(shape)).standard_normal(shape), dtype)


def _make(cls: type[Any], **kwargs: Any) -> tuple[Any, Params]:
  graph = Graph(f"conv{next(_names)}")
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("kernel_init", _numpy_init)
  layer = cls(graph.child("layer"), rng=rng, **kwargs)
  return layer, rng.seed(Params(), seed=0)


def _random(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _per_axis(layer: Any, name: str) -> tuple[int, ...]:
  """The layer's setting `name` (an int or one per spatial axis) as one int per axis."""
  value = getattr(layer, name)
  return (value,) * len(layer.kernel_size) if isinstance(value, int) else tuple(value)


def _run_with_bias(layer: Any, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
  """Creates the params, gives the bias non-zero values, and runs again."""
  _, params = layer(params, x)
  if layer.use_bias:
    params = layer.set_param(params, "bias", jnp.arange(layer.output_size, dtype=jnp.float32))
  y, params = layer(params, x)
  return y, params


def _kernel_bias(layer: Any, params: Params) -> tuple[jax.Array, jax.Array]:
  kernel = params[layer.param_path("kernel")].value
  bias = (
      params[layer.param_path("bias")].value if layer.use_bias
      else jnp.zeros(layer.output_size)
  )
  return kernel, bias


def _reference_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, n: int, batch_dims: int, **lax_kwargs: Any
) -> jax.Array:
  """`lax.conv_general_dilated` over one batch axis, with the batch axes folded by hand."""
  batch = x.shape[:batch_dims]
  flat = x.reshape((-1,) + x.shape[batch_dims:]) if batch_dims else x[None]
  y = jax.lax.conv_general_dilated(
      flat, kernel, dimension_numbers=_LAYOUT[n], precision="highest", **lax_kwargs
  )
  y = y + bias
  return y.reshape(batch + y.shape[1:]) if batch_dims else y[0]


CONV_CASES: list[tuple[str, tuple[int, ...], tuple[int, ...], dict[str, Any], int]] = [
    # (id, kernel_size, input shape, Conv kwargs, number of batch axes)
    ("1d_same", (3,), (2, 9, 3), {}, 1),
    ("1d_valid_stride", (3,), (2, 9, 3), {"padding": "VALID", "strides": 2}, 1),
    ("1d_kernel_dilation", (3,), (2, 11, 2), {"kernel_dilation": 2}, 1),
    ("1d_input_dilation", (2,), (2, 5, 2), {"input_dilation": 2, "padding": "VALID"}, 1),
    ("1d_pairs", (3,), (1, 7, 2), {"padding": [(2, 0)]}, 1),
    ("1d_unbatched", (3,), (7, 2), {"padding": "valid"}, 0),
    ("2d_same_stride", (3, 3), (2, 7, 8, 3), {"strides": (2, 3)}, 1),
    ("2d_valid_dilation", (3, 2), (1, 8, 8, 2), {"padding": "VALID", "kernel_dilation": (2, 1)}, 1),
    ("2d_groups", (3, 3), (2, 6, 6, 4), {"feature_group_count": 2}, 1),
    ("2d_depthwise", (3, 3), (1, 5, 5, 3), {"feature_group_count": 3}, 1),
    ("2d_pairs", (2, 3), (1, 5, 6, 2), {"padding": ((1, 0), (0, 2))}, 1),
    ("2d_extra_batch", (3, 3), (2, 3, 5, 5, 2), {"strides": 2}, 2),
    ("2d_input_dilation_same", (3, 3), (1, 4, 4, 2), {"input_dilation": (2, 1)}, 1),
    ("2d_no_bias", (1, 1), (1, 3, 3, 2), {"use_bias": False}, 1),
    ("3d_same", (2, 3, 2), (2, 4, 5, 4, 2), {}, 1),
    ("3d_valid_strides_groups", (3, 3, 3), (1, 6, 6, 7, 4),
     {"padding": "VALID", "strides": (1, 2, 3), "feature_group_count": 2}, 1),
]


@pytest.mark.parametrize(
    "kernel_size,shape,kwargs,batch_dims", [c[1:] for c in CONV_CASES],
    ids=[c[0] for c in CONV_CASES],
)
def test_conv_matches_lax(
    kernel_size: tuple[int, ...], shape: tuple[int, ...], kwargs: dict[str, Any], batch_dims: int
) -> None:
  output_size = 6  # divisible by every feature_group_count used here
  layer, params = _make(Conv, kernel_size=kernel_size, output_size=output_size, **kwargs)
  x = _random(shape)
  y, params = _run_with_bias(layer, params, x)
  kernel, bias = _kernel_bias(layer, params)
  n = len(kernel_size)
  groups = kwargs.get("feature_group_count", 1)
  assert kernel.shape == kernel_size + (shape[-1] // groups, output_size)
  padding = kwargs.get("padding", "SAME")
  if isinstance(padding, str):
    padding = padding.upper()
    if any(d > 1 for d in _per_axis(layer, "input_dilation")):
      # lax takes only explicit pairs with an input dilation; the documented
      # rule measures the padding mode on the dilated input.
      spatial = shape[batch_dims:-1]
      dilated = [(s - 1) * d + 1 for s, d in zip(spatial, _per_axis(layer, "input_dilation"))]
      padding = jax.lax.padtype_to_pads(dilated, kernel_size, _per_axis(layer, "strides"), padding)
  reference = _reference_conv(
      x, kernel, bias, n, batch_dims,
      window_strides=_per_axis(layer, "strides"),
      padding=padding,
      lhs_dilation=_per_axis(layer, "input_dilation"),
      rhs_dilation=_per_axis(layer, "kernel_dilation"),
      feature_group_count=groups,
  )
  assert y.shape == reference.shape
  assert y.shape[:batch_dims] == shape[:batch_dims]
  np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)


def _circular_reference(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], dilation: tuple[int, ...],
) -> jax.Array:
  """Circular convolution by gathering wrapped indices: out[j] = sum_k x[(j*s + k*d - low) mod n] w[k].

  `low` is the amount 'SAME' would pad on the low side.
  """
  n = kernel.ndim - 2
  spatial = x.shape[1:-1]
  gathered = x
  for axis in range(n):
    size, k, s, d = spatial[axis], kernel.shape[axis], strides[axis], dilation[axis]
    extent = (k - 1) * d + 1
    out = -(-size // s)
    low = max((out - 1) * s + extent - size, 0) // 2
    index = (np.arange(out)[:, None] * s + np.arange(k)[None, :] * d - low) % size
    # Replace this spatial axis by two axes (out, k).
    position = 1 + 2 * axis
    gathered = jnp.take(gathered, jnp.asarray(index), axis=position)
  # gathered: (batch, out0, k0, out1, k1, ..., channels)
  letters = "abcdefgh"
  outs = "".join(letters[2 * i] for i in range(n))
  ks = "".join(letters[2 * i + 1] for i in range(n))
  pairs = "".join(letters[2 * i] + letters[2 * i + 1] for i in range(n))
  return jnp.einsum(f"z{pairs}y,{ks}yx->z{outs}x", gathered, kernel, precision="highest")


@pytest.mark.parametrize(
    "kernel_size,shape,strides,dilation",
    [
        ((3,), (2, 7, 2), (1,), (1,)),
        ((4,), (2, 9, 2), (2,), (2,)),
        ((3, 3), (1, 5, 6, 2), (1, 1), (1, 1)),
        ((3, 2), (2, 6, 5, 3), (2, 1), (1, 2)),
    ],
)
def test_conv_circular_wraps_around(
    kernel_size: tuple[int, ...], shape: tuple[int, ...], strides: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
  layer, params = _make(
      Conv, kernel_size=kernel_size, output_size=3, padding="CIRCULAR",
      strides=strides, kernel_dilation=dilation, use_bias=False,
  )
  x = _random(shape)
  y, params = layer(params, x)
  kernel, _ = _kernel_bias(layer, params)
  reference = _circular_reference(x, kernel, strides, dilation)
  assert y.shape == reference.shape
  np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)


def test_conv_circular_differs_from_zero_padding() -> None:
  # A shifted delta shows the wrap-around: the last input reaches the first output.
  layer, params = _make(Conv, kernel_size=(3,), output_size=1, padding="CIRCULAR", use_bias=False,
                        kernel_init=jax.nn.initializers.ones)
  x = jnp.zeros((1, 5, 1)).at[0, 4, 0].set(1.0)
  y, _ = layer(params, x)
  np.testing.assert_allclose(y[0, :, 0], [1.0, 0.0, 0.0, 1.0, 1.0])


def test_conv_params_order_metadata_and_reuse() -> None:
  layer, params = _make(
      Conv, kernel_size=(3, 3), output_size=2,
      kernel_metadata={SHARDING: (None, None, None, "model")},
      bias_metadata={SHARDING: ("model",)},
  )
  _, params = layer(params, jnp.ones((1, 4, 4, 3)))
  own = [path[-1] for path in params if path[:-1] == layer.graph.path]
  assert own == ["kernel", "bias"]
  assert params[layer.param_path("kernel")].sharding == (None, None, None, "model")
  assert params[layer.param_path("bias")].sharding == ("model",)
  # Locked params run with any batch and spatial size, but not other channels.
  locked = params.locked()
  y, same = layer(locked, jnp.ones((2, 3, 6, 6, 3)))
  assert y.shape == (2, 3, 6, 6, 2) and same is locked
  with pytest.raises(ValueError, match="kernel"):
    layer(locked, jnp.ones((1, 4, 4, 5)))


def test_conv_promotes_dtypes() -> None:
  layer, params = _make(Conv, kernel_size=(2,), output_size=2)
  y, _ = layer(params, jnp.ones((1, 4, 2), jnp.bfloat16))
  assert y.dtype == jnp.float32


@pytest.mark.parametrize("cls", [Conv, ConvTranspose])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_inputs_are_refused(cls: type[Any], dtype: Any) -> None:
  layer, params = _make(cls, kernel_size=(2,), output_size=2)
  with pytest.raises(TypeError, match=rf"{cls.__name__} '.*': inputs must be floating point, got dtype {jnp.dtype(dtype)}.*cast them first"):
    layer(params, jnp.ones((1, 4, 2), dtype))


def test_conv_errors_name_the_module() -> None:
  graph = Graph("conv_err")
  rng = Rng(graph.child("rng"))
  params = rng.seed(Params(), seed=0)
  with pytest.raises(TypeError, match=r"conv_err.*kernel_size must be a sequence"):
    Conv(graph.child("a"), kernel_size=3, output_size=2, rng=rng)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(ValueError, match=r"conv_err.*strides"):
    Conv(graph.child("b"), kernel_size=(3, 3), output_size=2, rng=rng, strides=(1, 2, 3))
  with pytest.raises(ValueError, match=r"conv_err.*padding"):
    Conv(graph.child("c"), kernel_size=(3,), output_size=2, rng=rng, padding="FULL")
  with pytest.raises(ValueError, match=r"conv_err.*padding"):
    Conv(graph.child("d"), kernel_size=(3, 3), output_size=2, rng=rng, padding=[(1, 1)])
  with pytest.raises(ValueError, match=r"conv_err.*output_size \(3\).*feature_group_count"):
    Conv(graph.child("e"), kernel_size=(3,), output_size=3, rng=rng, feature_group_count=2)
  with pytest.raises(ValueError, match=r"conv_err.*CIRCULAR"):
    Conv(graph.child("f"), kernel_size=(3,), output_size=2, rng=rng, padding="circular",
         input_dilation=2)
  grouped = Conv(graph.child("g"), kernel_size=(3,), output_size=4, rng=rng, feature_group_count=2)
  with pytest.raises(ValueError, match=r"^Conv 'conv_err/g'.*input channels \(3\).*divisible"):
    grouped(params, jnp.ones((1, 5, 3)))
  two_d = Conv(graph.child("h"), kernel_size=(3, 3), output_size=2, rng=rng)
  with pytest.raises(ValueError, match=r"^Conv 'conv_err/h'.*at least 3 axes"):
    two_d(params, jnp.ones((5, 3)))
  with pytest.raises(ValueError, match=r"^ConvTranspose 'conv_err/i'.*padding"):
    ConvTranspose(graph.child("i"), kernel_size=(3,), output_size=2, rng=rng, padding="CIRCULAR")
  with pytest.raises(ValueError, match=r"^Conv 'conv_err/j'.*output_size must be a positive int, got True"):
    Conv(graph.child("j"), kernel_size=(3,), output_size=True, rng=rng)
  with pytest.raises(ValueError, match=r"^Conv 'conv_err/k'.*feature_group_count must be a positive int, got 1.0"):
    Conv(graph.child("k"), kernel_size=(3,), output_size=2, rng=rng, feature_group_count=1.0)  # type: ignore[arg-type]  # the misuse under test


@pytest.mark.parametrize("kernel_size,shape", [((3,), (2, 5, 3)), ((4, 3), (2, 4, 5, 2)),
                                               ((2, 2, 3), (1, 3, 2, 4, 2))])
def test_conv_transpose_stride_two_same_doubles(
    kernel_size: tuple[int, ...], shape: tuple[int, ...]
) -> None:
  layer, params = _make(ConvTranspose, kernel_size=kernel_size, output_size=3, strides=2)
  y, params = layer(params, _random(shape))
  assert y.shape == (shape[0],) + tuple(2 * s for s in shape[1:-1]) + (3,)
  assert params[layer.param_path("kernel")].value.shape == kernel_size + (shape[-1], 3)


TRANSPOSE_CASES: list[tuple[str, tuple[int, ...], tuple[int, ...], dict[str, Any]]] = [
    ("1d_same_s2", (3,), (2, 5, 3), {"strides": 2}),
    ("1d_valid_s2", (3,), (2, 5, 3), {"strides": 2, "padding": "VALID"}),
    ("1d_valid_kernel_smaller_than_stride", (2,), (2, 5, 2), {"strides": 3, "padding": "VALID"}),
    ("1d_same_dilated", (3,), (1, 6, 2), {"strides": 2, "kernel_dilation": 2}),
    ("1d_pairs", (3,), (1, 6, 2), {"strides": 2, "padding": [(1, 2)]}),
    ("2d_same_mixed", (4, 3), (2, 4, 5, 2), {"strides": (2, 3)}),
    ("2d_valid", (3, 3), (1, 3, 4, 2), {"strides": 2, "padding": "VALID"}),
    ("3d_same", (3, 2, 2), (1, 3, 2, 3, 2), {"strides": (1, 2, 2)}),
]


@pytest.mark.parametrize(
    "kernel_size,shape,kwargs", [c[1:] for c in TRANSPOSE_CASES], ids=[c[0] for c in TRANSPOSE_CASES]
)
def test_conv_transpose_matches_lax(
    kernel_size: tuple[int, ...], shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
  layer, params = _make(ConvTranspose, kernel_size=kernel_size, output_size=3, **kwargs)
  x = _random(shape)
  y, params = _run_with_bias(layer, params, x)
  kernel, bias = _kernel_bias(layer, params)
  n = len(kernel_size)
  padding = kwargs.get("padding", "SAME")
  reference = jax.lax.conv_transpose(
      x, kernel, _per_axis(layer, "strides"), padding,
      rhs_dilation=_per_axis(layer, "kernel_dilation"),
      dimension_numbers=_LAYOUT[n], precision="highest",
  ) + bias
  assert y.shape == reference.shape
  np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)


def test_conv_transpose_groups_and_batch_axes() -> None:
  layer, params = _make(
      ConvTranspose, kernel_size=(3, 3), output_size=4, strides=2, feature_group_count=2
  )
  x = _random((2, 3, 4, 4, 6))  # two batch axes, 6 channels in 2 groups
  y, params = _run_with_bias(layer, params, x)
  kernel, bias = _kernel_bias(layer, params)
  assert kernel.shape == (3, 3, 3, 4)
  flat = x.reshape((6, 4, 4, 6))
  # Each group maps its 3 input channels to its 2 output channels on its own.
  parts = [
      jax.lax.conv_transpose(
          flat[..., 3 * g : 3 * (g + 1)], kernel[..., 2 * g : 2 * (g + 1)], (2, 2), "SAME",
          dimension_numbers=_LAYOUT[2], precision="highest",
      )
      for g in range(2)
  ]
  reference = (jnp.concatenate(parts, axis=-1) + bias).reshape((2, 3, 8, 8, 4))
  np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)


TRANSFORM_CASES: list[tuple[str, Callable[[], tuple[Any, Params]], tuple[int, ...]]] = [
    ("conv2d", lambda: _make(Conv, kernel_size=(3, 3), output_size=2, strides=2), (5, 5, 3)),
    ("conv1d_circular", lambda: _make(Conv, kernel_size=(3,), output_size=2, padding="CIRCULAR"),
     (6, 2)),
    ("conv_transpose", lambda: _make(ConvTranspose, kernel_size=(3, 3), output_size=2, strides=2),
     (3, 3, 2)),
]


@pytest.mark.parametrize(
    "make,shape", [c[1:] for c in TRANSFORM_CASES], ids=[c[0] for c in TRANSFORM_CASES]
)
def test_conv_under_jit_grad_vmap(
    make: Callable[[], tuple[Any, Params]], shape: tuple[int, ...]
) -> None:
  layer, params = make()
  x = _random((2,) + shape)
  y, params = layer(params, x)
  params = params.locked()
  # jit
  y_jit, params_jit = jax.jit(layer)(params, x)
  np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-5)
  assert _treedef(params_jit) == _treedef(params)
  # grad of the trainable params, through split/merge
  trainable, rest = params.split()
  grads = jax.grad(lambda t: jnp.sum(layer(t.merge(rest), x)[0] ** 2))(trainable)
  assert set(grads) == set(trainable)
  assert all(bool(jnp.any(g.value != 0)) for g in grads.values())
  # vmap over an extra leading axis with replicated params
  xs = jnp.stack([x, 2 * x])
  ys, _ = jax.vmap(layer, in_axes=(None, 0), out_axes=(0, None))(params, xs)
  np.testing.assert_allclose(ys[0], y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ys[1], layer(params, 2 * x)[0], rtol=1e-5, atol=1e-5)


_SHARED = [
    "strides", "padding", "kernel_dilation", "feature_group_count", "rng", "use_bias",
    "kernel_init", "bias_init", "kernel_metadata", "bias_metadata", "precision",
    "param_dtype", "dtype",
]


@pytest.mark.parametrize(
    "cls,keywords", [(Conv, ["input_dilation"] + _SHARED), (ConvTranspose, _SHARED)],
    ids=["Conv", "ConvTranspose"],
)
def test_signature_lists_sizes_by_position_and_the_rest_by_keyword(
    cls: type[Any], keywords: list[str]
) -> None:
  parameters = inspect.signature(cls).parameters
  kinds = {name: p.kind for name, p in parameters.items()}
  assert [n for n, k in kinds.items() if k is inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
      "graph", "output_size", "kernel_size"]
  assert [n for n, k in kinds.items() if k is inspect.Parameter.KEYWORD_ONLY] == keywords
  assert parameters["rng"].default is inspect.Parameter.empty  # required
  assert parameters["strides"].default == 1 and parameters["padding"].default == "SAME"


def test_repr_and_config_follow_a_changed_setting() -> None:
  layer, params = _make(Conv, kernel_size=(3,), output_size=2, kernel_init=jax.nn.initializers.ones)
  name = "/".join(layer.graph.path[:-1])
  assert repr(layer) == f"Conv(output_size=2, kernel_size=(3,), rng=Rng@{name}/rng, kernel_init=ones)"
  x = _random((1, 8, 2))
  y, params = layer(params, x)
  assert y.shape == (1, 8, 2)
  # Sequences are kept as tuples and modes upper-cased, as the layer uses them.
  upper, _ = _make(Conv, output_size=2, kernel_size=[3], padding="valid", strides=[2])
  assert upper.config["padding"] == "VALID" and upper.config["strides"] == (2,)
  layer.strides = 2
  layer.padding = "valid"
  assert layer.config["strides"] == 2 and layer.config["padding"] == "valid"
  assert "strides=2, padding='valid'" in repr(layer)
  y, _ = layer(params, x)  # a later trace computes with the changed settings
  assert y.shape == (1, 3, 2)
  layer.strides = (1, 2)
  with pytest.raises(ValueError, match=r"^Conv '.*': strides must be a positive int or 1 positive ints"):
    layer(params, x)


def _recorded(layer: Any, params: Params, x: jax.Array) -> tuple[jax.Array, list[Contraction]]:
  seen: list[Contraction] = []

  def hook(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append(contraction)
    return contraction.compute(inputs, weight)

  with contraction_hooks(hook):
    y, _ = layer(params, x)
  return y, seen


def test_convolutions_go_through_contract() -> None:
  conv, params = _make(Conv, kernel_size=(3, 3), output_size=4, strides=2, input_dilation=(1, 2),
                       feature_group_count=2)
  x = _random((2, 5, 5, 4))
  y, params = conv(params, x)
  hooked, seen = _recorded(conv, params, x)
  np.testing.assert_array_equal(hooked, y)
  (contraction,) = seen
  assert contraction.weight_path() == conv.param_path("kernel")
  assert contraction.module is conv and contraction.weight_name == ("kernel",)
  assert contraction.equation is None and contraction.conv == ConvDimensions(
      (2, 2), ((1, 1), (1, 1)), (1, 2), (1, 1), 2)
  transpose, params = _make(ConvTranspose, kernel_size=(3,), output_size=2, strides=2)
  x = _random((1, 4, 3))
  _, params = transpose(params, x)
  _, seen = _recorded(transpose, params, x)
  (contraction,) = seen
  assert contraction.weight_name == ("kernel",) and contraction.conv is not None
  assert contraction.conv.input_dilation == (2,) and contraction.conv.strides == (1,)


@pytest.mark.parametrize(
    "kwargs", [{"strides": (2, 1), "kernel_dilation": (1, 2), "padding": "SAME"},
               {"input_dilation": 2, "padding": ((1, 0), (2, 1)), "feature_group_count": 2}],
    ids=["strided_dilated", "input_dilation_pairs"],
)
def test_conv_is_bit_identical_to_conv_general_dilated(kwargs: dict[str, Any]) -> None:
  layer, params = _make(Conv, kernel_size=(3, 2), output_size=4, use_bias=False, **kwargs)
  x = _random((2, 7, 6, 4))
  y, params = layer(params, x)
  kernel = params[layer.param_path("kernel")].value
  strides = _per_axis(layer, "strides")
  dilation = _per_axis(layer, "kernel_dilation")
  input_dilation = _per_axis(layer, "input_dilation")
  padding = kwargs["padding"]
  if isinstance(padding, str):
    extent = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, dilation)]
    padding = tuple(jax.lax.padtype_to_pads(x.shape[1:3], extent, strides, padding))
  reference = jax.lax.conv_general_dilated(
      x, kernel, strides, padding, lhs_dilation=input_dilation, rhs_dilation=dilation,
      dimension_numbers=_LAYOUT[2], feature_group_count=kwargs.get("feature_group_count", 1),
  )
  np.testing.assert_array_equal(y, reference)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_transpose_is_bit_identical_to_conv_transpose(padding: str) -> None:
  layer, params = _make(ConvTranspose, kernel_size=(3, 4), output_size=3, strides=(2, 3),
                        padding=padding, use_bias=False)
  x = _random((2, 4, 5, 2))
  y, params = layer(params, x)
  kernel = params[layer.param_path("kernel")].value
  reference = jax.lax.conv_transpose(x, kernel, (2, 3), padding, dimension_numbers=_LAYOUT[2])
  np.testing.assert_array_equal(y, reference)
