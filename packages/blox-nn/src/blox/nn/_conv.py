"""`Conv` and `ConvTranspose`: N-D convolutions over channels-last inputs.

Inputs are laid out as `(*batch, *spatial, channels)`. The number of spatial
axes is `len(kernel_size)` (1-D, 2-D, 3-D, ...); any number of leading batch
axes is accepted, including none. The kernel is created on the first call,
when the input channels are known. Both convolve through `blox.nn.contract`
(with a `ConvDimensions`), so contraction hooks see their kernels too.

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
  >>> conv
  Conv(output_size=8, kernel_size=(3, 3), strides=2, rng=Rng@net/rng)
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from blox.graph import setting
from blox.nn._checks import check_float_inputs, check_positive_int
from blox.nn._contract import ConvDimensions
from blox.nn._layer import KernelLayer
from blox.nn._precision import to_compute, to_output
from blox.nn._spatial import Padding, as_size_tuple, as_tuple, normalize_padding
from blox.nn._out_sharding import follow
from blox.params import Params

__all__ = ["Conv", "ConvTranspose"]


class _ConvBase(KernelLayer):
  """What `Conv` and `ConvTranspose` share: settings, params and batch axes.

  The per-axis settings (`strides`, the dilations) keep the value given, an
  int or a tuple, and are spread over the spatial axes when the layer runs;
  they are checked against `kernel_size` when the layer is made and again
  on each call, so a later change (`conv.strides = 2`) is checked too.
  """

  # The padding modes the class accepts, and its settings given per spatial axis.
  _PADDINGS: ClassVar[tuple[str, ...]] = ("SAME", "VALID")
  _PER_AXIS: ClassVar[tuple[str, ...]] = ("strides", "kernel_dilation")

  output_size: int = setting(
      kw_only=False, check=check_positive_int, doc="the size of the output channel axis.")
  kernel_size: Sequence[int] = setting(
      kw_only=False, check=as_size_tuple,
      doc="one size per spatial axis, e.g. `(3,)` for 1-D or `(3, 3)` for 2-D inputs."
      " It must be a sequence: a bare int would leave the number of spatial axes unsaid.",
  )
  strides: int | Sequence[int] = setting(
      default=1, doc="an int (the same for every spatial axis) or one int per spatial axis.")
  padding: Padding = setting(
      default="SAME",
      doc="a padding mode (case-insensitive; the modes are described above) or one"
      " `(low, high)` pair of ints per spatial axis.",
  )
  kernel_dilation: int | Sequence[int] = setting(
      default=1,
      doc="the spacing of the kernel elements (atrous convolution), as"
      " `jax.lax.conv_general_dilated`'s `rhs_dilation`; an int or one per spatial axis.",
  )
  feature_group_count: int = setting(
      default=1, check=check_positive_int,
      doc="splits input and output channels into this many groups convolved"
      " separately; both channel counts must be divisible by it (`in_channels`"
      " groups give a depthwise convolution).",
  )

  def __post_init__(self) -> None:
    # Checked here, where the number of spatial axes is known, so that a
    # mistake shows where the layer is made. Sequences are kept as tuples and
    # padding modes upper-cased, so that `repr` shows what the layer uses.
    self._check_settings()
    for name in self._PER_AXIS:
      value = getattr(self, name)
      if not isinstance(value, int):
        setattr(self, name, tuple(value))
    self.padding = self._resolved_padding()

  @property
  def num_spatial_dims(self) -> int:
    """The number of spatial axes: `len(kernel_size)`."""
    return len(self.kernel_size)

  def _per_axis(self, name: str) -> tuple[int, ...]:
    """The setting `name` (`strides` or a dilation), one int per spatial axis."""
    return as_tuple(getattr(self, name), self.num_spatial_dims, name, self.where())

  def _resolved_padding(self) -> str | tuple[tuple[int, int], ...]:
    """`padding` as an upper-case mode or one `(low, high)` pair per spatial axis."""
    return normalize_padding(self.padding, self.num_spatial_dims, self.where(), self._PADDINGS)

  def _check_settings(self) -> None:
    """Raises ValueError for settings that do not fit together."""
    if self.output_size % self.feature_group_count:
      raise ValueError(
          f"{self.where()}: output_size ({self.output_size}) must be divisible by"
          f" feature_group_count ({self.feature_group_count})."
      )
    for name in self._PER_AXIS:
      self._per_axis(name)
    self._resolved_padding()

  def _dilated_kernel_size(self) -> tuple[int, ...]:
    """The extent of each kernel axis once the kernel dilation spreads it out."""
    return tuple(
        (k - 1) * d + 1 for k, d in zip(self.kernel_size, self._per_axis("kernel_dilation")))

  @abc.abstractmethod
  def _convolve(self, params: Params, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution proper, on `x` of shape `(batch, *spatial, channels)`."""

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Convolves floating-point `inputs` of shape `(*batch, *spatial, channels)`.

    Returns `(outputs, params)`; outputs are `(*batch, *out_spatial,
    output_size)`, in the compute dtype (`dtype`, else the policy's, else the
    promoted dtype of the inputs and the kernel), or the policy's output dtype.
    """
    where = self.where()
    check_float_inputs(inputs, where)
    self._check_settings()
    n = self.num_spatial_dims
    shape = tuple(jnp.shape(inputs))
    if len(shape) < n + 1:
      raise ValueError(
          f"{where}: a kernel_size of length {n} needs inputs shaped"
          f" (*batch, {n} spatial axes, channels), i.e. at least {n + 1} axes;"
          f" got shape {shape}."
      )
    channels = shape[-1]
    groups = self.feature_group_count
    if channels % groups:
      raise ValueError(
          f"{where}: the input channels ({channels}) must be divisible by"
          f" feature_group_count ({groups})."
      )
    dtypes = self.dtypes()
    kernel, bias, params = self.kernel_and_bias(
        params, tuple(self.kernel_size) + (channels // groups, self.output_size),
        (self.output_size,),
    )
    inputs, kernel, bias = to_compute(dtypes, inputs, kernel, bias)
    # lax convolutions take exactly one batch axis: fold the leading ones into it.
    batch_shape, item_shape = shape[: len(shape) - n - 1], shape[len(shape) - n - 1 :]
    x = jnp.reshape(inputs, (math.prod(batch_shape),) + item_shape)
    y = self._convolve(params, x, kernel)
    if bias is not None:
      y = y + follow(bias, y)
    return to_output(dtypes, jnp.reshape(y, batch_shape + y.shape[1:])), params


class Conv(_ConvBase):
  """A convolution (strictly, a cross-correlation) over `(*batch, *spatial, channels)`.

  The kernel has shape `(*kernel_size, in_channels // feature_group_count,
  output_size)` and is created before the bias `(output_size,)`.

  Padding modes: `'SAME'` (output size `ceil(input / stride)`) and `'VALID'`
  (no padding), both measured on the input as spread out by
  `input_dilation`; `'CIRCULAR'` (the input wraps around: it is padded with
  its own opposite edge by the amounts 'SAME' would use, then convolved with
  'VALID'; not combinable with `input_dilation`).
  """

  _PADDINGS: ClassVar[tuple[str, ...]] = ("SAME", "VALID", "CIRCULAR")
  _PER_AXIS: ClassVar[tuple[str, ...]] = ("strides", "input_dilation", "kernel_dilation")

  input_dilation: int | Sequence[int] = setting(
      default=1,
      doc="the spacing of the input elements (transposed convolution), as"
      " `jax.lax.conv_general_dilated`'s `lhs_dilation`; an int or one per spatial axis.",
  )

  def _check_settings(self) -> None:
    super()._check_settings()
    dilated = any(d != 1 for d in self._per_axis("input_dilation"))
    if dilated and self._resolved_padding() == "CIRCULAR":
      raise ValueError(
          f"{self.where()}: padding='CIRCULAR' cannot be combined with"
          f" input_dilation={self.input_dilation!r}; use 'SAME', 'VALID' or explicit pairs."
      )

  def _convolve(self, params: Params, x: jax.Array, kernel: jax.Array) -> jax.Array:
    strides = self._per_axis("strides")
    input_dilation = self._per_axis("input_dilation")
    padding = self._resolved_padding()
    if isinstance(padding, str):
      # Padding modes apply to the input as dilated by input_dilation (lax
      # takes only explicit pairs together with an input dilation).
      spatial = [(s - 1) * d + 1 for s, d in zip(x.shape[1:-1], input_dilation)]
      pads = jax.lax.padtype_to_pads(
          spatial, self._dilated_kernel_size(), strides,
          "SAME" if padding == "CIRCULAR" else padding,
      )
      if padding == "CIRCULAR":
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap")
        pads = [(0, 0)] * len(pads)
      padding = tuple((low, high) for low, high in pads)
    dimensions = ConvDimensions(
        strides, padding, input_dilation, self._per_axis("kernel_dilation"),
        self.feature_group_count,
    )
    return self.contract(params, x, kernel, conv=dimensions)


class ConvTranspose(_ConvBase):
  """A transposed ("fractionally strided") convolution; strides upsample.

  Each spatial axis of the input is spread out by its stride (stride - 1 zeros
  between neighbours), padded, and convolved with stride 1. Output sizes:
  `'SAME'` gives `input * stride` (stride 2 doubles every spatial size);
  `'VALID'` gives `input * stride + max(k - stride, 0)`, where
  `k = (kernel_size - 1) * kernel_dilation + 1`, i.e. every position the
  kernel touches. These match `jax.lax.conv_transpose` (and Keras). Explicit
  `(low, high)` pairs pad the stride-spread input (as in
  `jax.lax.conv_transpose` with explicit pairs).

  The kernel has shape `(*kernel_size, in_channels // feature_group_count,
  output_size)` and is applied as written, not flipped: it is not the
  kernel of the forward `Conv` whose gradient this computes (that would need
  spatially flipped axes and swapped channel axes), and it needs no such
  relation to be useful as a learned upsampler.
  """

  def _pads(self) -> Sequence[tuple[int, int]]:
    """(low, high) padding of the stride-spread input, per spatial axis."""
    padding = self._resolved_padding()
    if not isinstance(padding, str):
      return padding
    pads = []
    for k, s in zip(self._dilated_kernel_size(), self._per_axis("strides")):
      # This is the adjoint of a forward convolution with the same stride and
      # padding mode: that one pads its input low by `forward_low`, so here the
      # kernel may hang `k - 1 - forward_low` positions over the low edge. The
      # high side takes whatever makes the documented output size.
      forward_low = max(k - s, 0) // 2 if padding == "SAME" else 0
      extra = 0 if padding == "SAME" else max(k - s, 0)
      low = k - 1 - forward_low
      # Output size = (spread input + low + high) - k + 1 = n * s + extra,
      # with spread input = (n - 1) * s + 1; n cancels out of `high`.
      high = s + extra + k - 2 - low
      pads.append((low, high))
    return pads

  def _convolve(self, params: Params, x: jax.Array, kernel: jax.Array) -> jax.Array:
    dimensions = ConvDimensions(
        (1,) * self.num_spatial_dims, self._pads(), self._per_axis("strides"),
        self._per_axis("kernel_dilation"), self.feature_group_count,
    )
    return self.contract(params, x, kernel, conv=dimensions)
