"""`Conv` and `ConvTranspose`: N-D convolutions over channels-last inputs.

Inputs are laid out as `(*batch, *spatial, channels)`. The number of spatial
axes is `len(kernel_size)` (1-D, 2-D, 3-D, ...); any number of leading batch
axes is accepted, including none. The kernel is created on the first call,
when the input channels are known.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> conv = Conv(graph.child('conv'), 8, (3, 3), rng=rng, strides=2)
  >>> y, params = conv(rng.seed(Params(), seed=0), jnp.ones((4, 16, 16, 3)))
  >>> y.shape, params[('net', 'conv', 'kernel')].value.shape
  ((4, 8, 8, 8), (3, 3, 3, 8))
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module
from blox.nn._checks import check_float_inputs, check_positive_int
from blox.nn._layer import kernel_and_bias
from blox.nn._precision import check_dtype, resolve_dtypes, to_compute, to_output
from blox.nn._spatial import Padding, as_size_tuple, as_tuple, normalize_padding
from blox.nn.initializers import lecun_normal, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["Conv", "ConvTranspose"]


def _dimension_numbers(n: int) -> jax.lax.ConvDimensionNumbers:
  """Channels-last layouts for `n` spatial axes: 'NHWC' inputs and outputs,
  'HWIO' kernels in the 2-D case, the same pattern for any other `n`."""
  spatial = tuple(range(1, n + 1))
  return jax.lax.ConvDimensionNumbers(
      lhs_spec=(0, n + 1) + spatial,
      rhs_spec=(n + 1, n) + tuple(range(n)),
      out_spec=(0, n + 1) + spatial,
  )


class _ConvBase(Module):
  """What `Conv` and `ConvTranspose` share: arguments, params and batch axes."""

  def __init__(
      self,
      graph: Graph,
      output_size: int,
      kernel_size: Sequence[int],
      *,
      rng: KeySource,
      strides: int | Sequence[int],
      padding: Padding,
      kernel_dilation: int | Sequence[int],
      feature_group_count: int,
      use_bias: bool,
      kernel_init: Initializer,
      bias_init: Initializer,
      kernel_metadata: Mapping[str, Any] | None,
      bias_metadata: Mapping[str, Any] | None,
      precision: jax.lax.PrecisionLike,
      param_dtype: Any,
      dtype: Any,
      paddings_allowed: tuple[str, ...],
  ) -> None:
    super().__init__(graph)
    where = self.where()
    check_positive_int(output_size, "output_size", where)
    self.kernel_size = as_size_tuple(kernel_size, "kernel_size", where)
    n = len(self.kernel_size)
    self.num_spatial_dims = n
    check_positive_int(feature_group_count, "feature_group_count", where)
    if output_size % feature_group_count:
      raise ValueError(
          f"{where}: output_size ({output_size}) must be divisible by"
          f" feature_group_count ({feature_group_count})."
      )
    self.output_size = output_size
    self.rng = rng
    self.strides = as_tuple(strides, n, "strides", where)
    self.padding = normalize_padding(padding, n, where, paddings_allowed)
    self.kernel_dilation = as_tuple(kernel_dilation, n, "kernel_dilation", where)
    self.feature_group_count = feature_group_count
    self.use_bias = use_bias
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.kernel_metadata = kernel_metadata
    self.bias_metadata = bias_metadata
    self.precision = precision
    self.param_dtype = check_dtype(param_dtype, "param_dtype", where)
    self.dtype = check_dtype(dtype, "dtype", where)

  def _dilated_kernel_size(self) -> tuple[int, ...]:
    """The extent of each kernel axis once the kernel dilation spreads it out."""
    return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation))

  @abc.abstractmethod
  def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution proper, on `x` of shape `(batch, *spatial, channels)`."""

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Convolves floating-point `inputs` of shape `(*batch, *spatial, channels)`.

    Returns `(outputs, params)`; outputs are `(*batch, *out_spatial,
    output_size)`, in the compute dtype (`dtype`, else the policy's, else the
    promoted dtype of the inputs and the kernel), or the policy's output dtype.
    """
    check_float_inputs(inputs, self.where())
    n = self.num_spatial_dims
    shape = tuple(jnp.shape(inputs))
    if len(shape) < n + 1:
      raise ValueError(
          f"{self.where()}: a kernel_size of length {n} needs inputs shaped"
          f" (*batch, {n} spatial axes, channels), i.e. at least {n + 1} axes;"
          f" got shape {shape}."
      )
    channels = shape[-1]
    groups = self.feature_group_count
    if channels % groups:
      raise ValueError(
          f"{self.where()}: the input channels ({channels}) must be divisible by"
          f" feature_group_count ({groups})."
      )
    dtypes = resolve_dtypes(self, self.param_dtype, self.dtype)
    kernel, bias, params = kernel_and_bias(
        self, params, kernel_shape=self.kernel_size + (channels // groups, self.output_size),
        bias_shape=(self.output_size,), kernel_init=self.kernel_init,
        bias_init=self.bias_init, rng=self.rng, use_bias=self.use_bias,
        kernel_metadata=self.kernel_metadata, bias_metadata=self.bias_metadata,
        param_dtype=dtypes.param,
    )
    inputs, kernel, bias = to_compute(dtypes, inputs, kernel, bias)
    # lax convolutions take exactly one batch axis: fold the leading ones into it.
    batch_shape, item_shape = shape[: len(shape) - n - 1], shape[len(shape) - n - 1 :]
    x = jnp.reshape(inputs, (math.prod(batch_shape),) + item_shape)
    y = self._convolve(x, kernel)
    if bias is not None:
      y = y + bias
    return to_output(dtypes, jnp.reshape(y, batch_shape + y.shape[1:])), params


class Conv(_ConvBase):
  """A convolution (strictly, a cross-correlation) over `(*batch, *spatial, channels)`.

  The kernel has shape `(*kernel_size, in_channels // feature_group_count,
  output_size)` and is created before the bias `(output_size,)`.

  Args:
    graph: the node this layer binds to.
    output_size: the size of the output channel axis.
    kernel_size: one size per spatial axis, e.g. `(3,)` for 1-D or `(3, 3)`
      for 2-D inputs. It must be a sequence: a bare int would leave the number
      of spatial axes unsaid.
    rng: the key source for initialisation.
    strides: an int (the same for every spatial axis) or one int per
      spatial axis; so are the two dilations.
    input_dilation: the spacing of the input elements (transposed
      convolution), as `jax.lax.conv_general_dilated`'s `lhs_dilation`.
    kernel_dilation: the spacing of the kernel elements (atrous
      convolution), as `jax.lax.conv_general_dilated`'s `rhs_dilation`.
    padding: `'SAME'` (output size `ceil(input / stride)`), `'VALID'` (no
      padding), both measured on the input as spread out by `input_dilation`;
      `'CIRCULAR'` (the input wraps around: it is padded with its
      own opposite edge by the amounts 'SAME' would use, then convolved with
      'VALID'; not combinable with `input_dilation`), or one `(low, high)` pair
      of ints per spatial axis. Case-insensitive.
    feature_group_count: splits input and output channels into this many
      groups convolved separately; both channel counts must be divisible by it
      (`in_channels` groups give a depthwise convolution).
    use_bias: whether to add a bias.
    kernel_init: the kernel's initializer `(key, shape, dtype) -> array`.
    bias_init: the bias's initializer.
    kernel_metadata: metadata for the kernel, e.g.
      `{'sharding': (None, None, None, 'model')}` for a 2-D kernel.
    bias_metadata: metadata for the bias.
    precision: the precision of the convolution (`jax.lax.Precision`).
    param_dtype: the dtype of the params when they are created; None: the
      policy's `param_dtype` (`Module.policy()`), else float32.
    dtype: the dtype of the computation; None: the policy's `compute_dtype`,
      else the inputs' dtype promoted with the params'. The outputs come out
      in the policy's `output_dtype` when it has one, else in this dtype.
  """

  def __init__(
      self,
      graph: Graph,
      output_size: int,
      kernel_size: Sequence[int],
      *,
      rng: KeySource,
      strides: int | Sequence[int] = 1,
      padding: Padding = "SAME",
      input_dilation: int | Sequence[int] = 1,
      kernel_dilation: int | Sequence[int] = 1,
      feature_group_count: int = 1,
      use_bias: bool = True,
      kernel_init: Initializer = lecun_normal(),
      bias_init: Initializer = zeros,
      kernel_metadata: Mapping[str, Any] | None = None,
      bias_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
      param_dtype: Any = None,
      dtype: Any = None,
  ) -> None:
    super().__init__(
        graph, output_size, kernel_size, rng=rng, strides=strides, padding=padding,
        kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
        use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
        kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
        precision=precision, param_dtype=param_dtype, dtype=dtype,
        paddings_allowed=("SAME", "VALID", "CIRCULAR"),
    )
    self.input_dilation = as_tuple(
        input_dilation, self.num_spatial_dims, "input_dilation", self.where()
    )
    if self.padding == "CIRCULAR" and any(d != 1 for d in self.input_dilation):
      raise ValueError(
          f"{self.where()}: padding='CIRCULAR' cannot be combined with"
          f" input_dilation={input_dilation!r}; use 'SAME', 'VALID' or explicit pairs."
      )

  def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    padding = self.padding
    if isinstance(padding, str):
      # Padding modes apply to the input as dilated by input_dilation (lax
      # takes only explicit pairs together with an input dilation).
      spatial = [(s - 1) * d + 1 for s, d in zip(x.shape[1:-1], self.input_dilation)]
      pads = jax.lax.padtype_to_pads(
          spatial, self._dilated_kernel_size(), self.strides,
          "SAME" if padding == "CIRCULAR" else padding,
      )
      if padding == "CIRCULAR":
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap")
        pads = [(0, 0)] * len(pads)
      padding = tuple((low, high) for low, high in pads)
    return jax.lax.conv_general_dilated(
        x, kernel, self.strides, padding,
        lhs_dilation=self.input_dilation, rhs_dilation=self.kernel_dilation,
        dimension_numbers=_dimension_numbers(self.num_spatial_dims),
        feature_group_count=self.feature_group_count, precision=self.precision,
    )


class ConvTranspose(_ConvBase):
  """A transposed ("fractionally strided") convolution; strides upsample.

  Each spatial axis of the input is spread out by its stride (stride - 1 zeros
  between neighbours), padded, and convolved with stride 1. Output sizes:
  `'SAME'` gives `input * stride` (stride 2 doubles every spatial size);
  `'VALID'` gives `input * stride + max(k - stride, 0)`, where
  `k = (kernel_size - 1) * kernel_dilation + 1`, i.e. every position the
  kernel touches. These match `jax.lax.conv_transpose` (and Keras).

  The kernel has shape `(*kernel_size, in_channels // feature_group_count,
  output_size)` and is applied as written, not flipped: it is not the
  kernel of the forward `Conv` whose gradient this computes (that would need
  spatially flipped axes and swapped channel axes), and it needs no such
  relation to be useful as a learned upsampler.

  Args:
    graph: the node this layer binds to.
    output_size: the size of the output channel axis.
    kernel_size: one size per spatial axis (a sequence, as for `Conv`).
    rng: the key source for initialisation.
    strides: an int or one int per spatial axis.
    kernel_dilation: an int or one int per spatial axis.
    padding: `'SAME'`, `'VALID'` (see above), or one `(low, high)` pair per
      spatial axis, padding the stride-spread input (as in
      `jax.lax.conv_transpose` with explicit pairs). Case-insensitive.
    feature_group_count: channel groups, as for `Conv`.
    use_bias: as for `Conv`; so are the arguments below.
    kernel_init: the kernel's initializer.
    bias_init: the bias's initializer.
    kernel_metadata: metadata for the kernel.
    bias_metadata: metadata for the bias.
    precision: the precision of the convolution.
    param_dtype: the dtype of the params when they are created.
    dtype: the dtype of the computation.
  """

  def __init__(
      self,
      graph: Graph,
      output_size: int,
      kernel_size: Sequence[int],
      *,
      rng: KeySource,
      strides: int | Sequence[int] = 1,
      padding: Padding = "SAME",
      kernel_dilation: int | Sequence[int] = 1,
      feature_group_count: int = 1,
      use_bias: bool = True,
      kernel_init: Initializer = lecun_normal(),
      bias_init: Initializer = zeros,
      kernel_metadata: Mapping[str, Any] | None = None,
      bias_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
      param_dtype: Any = None,
      dtype: Any = None,
  ) -> None:
    super().__init__(
        graph, output_size, kernel_size, rng=rng, strides=strides, padding=padding,
        kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
        use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
        kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
        precision=precision, param_dtype=param_dtype, dtype=dtype,
        paddings_allowed=("SAME", "VALID"),
    )

  def _pads(self) -> Sequence[tuple[int, int]]:
    """(low, high) padding of the stride-spread input, per spatial axis."""
    if not isinstance(self.padding, str):
      return self.padding
    pads = []
    for k, s in zip(self._dilated_kernel_size(), self.strides):
      # This is the adjoint of a forward convolution with the same stride and
      # padding mode: that one pads its input low by `forward_low`, so here the
      # kernel may hang `k - 1 - forward_low` positions over the low edge. The
      # high side takes whatever makes the documented output size.
      forward_low = max(k - s, 0) // 2 if self.padding == "SAME" else 0
      extra = 0 if self.padding == "SAME" else max(k - s, 0)
      low = k - 1 - forward_low
      # Output size = (spread input + low + high) - k + 1 = n * s + extra,
      # with spread input = (n - 1) * s + 1; n cancels out of `high`.
      high = s + extra + k - 2 - low
      pads.append((low, high))
    return pads

  def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1,) * self.num_spatial_dims, self._pads(),
        lhs_dilation=self.strides, rhs_dilation=self.kernel_dilation,
        dimension_numbers=_dimension_numbers(self.num_spatial_dims),
        feature_group_count=self.feature_group_count, precision=self.precision,
    )
