"""The stored format of a quantized weight: integers, their scales, and back.

A weight of one layer has `input_axes` leading dims that the product
contracts (one for `Linear`'s `[in, out]` and attention's query/key/value
`[embed, heads, head_dim]`, two for attention's out `[heads, head_dim,
embed]`) and output dims after them. Flattening gives `[in, out]`; the
input rows are cut into groups of `group_size` consecutive rows (one group
of all rows without a group size), and every (group, output channel) gets
its own symmetric scale `max|w| / qmax`, with `qmax` 127 (8 bits) or 7
(4 bits). Rounding to nearest gives integers in `[-qmax, qmax]`.

Stored (after any stacked layer axes, which both keep in front):

- the integers at the weight's own path and shape: int8 for 8 bits; for
  4 bits, uint8 bytes that pack two consecutive entries of the last axis
  (the even entry in the low nibble, the odd one in the high nibble, two's
  complement), so that axis is halved. For a kernel that is an output axis,
  which leaves the input axes whole (attention checks the input width
  straight from the stored param);
- the scales, float32 `[groups, *output dims]`, beside it under the name
  `<weight>_scale`.

An embedding table `[vocab, features]` is the other way round: `attend`
contracts its last axis (it is `[out, in]`), and a lookup reads whole rows.
Its `input_axes` is negative, -1: the last axis is the input axis. The
groups then cut each row's features, the scales are `[*output dims,
groups]` (`[vocab, groups]`: one row of scales per row of the table, which a
lookup gathers with the row), and 4 bits pack along the features (still the
last axis), so a gathered row unpacks and dequantizes on its own.

Example:
  >>> import jax.numpy as jnp
  >>> w = jnp.array([[0.5, -1.0], [0.25, 2.0], [-0.5, 1.0], [0.0, -2.0]])
  >>> q, scale = quantize_array(w, bits=4, input_axes=1, group_size=2, stacked=0)
  >>> q.dtype, q.shape, scale.shape
  (dtype('uint8'), (4, 1), (2, 2))
  >>> back = dequantize(unpack_int4(q).astype(jnp.float32), scale, input_axes=1)
  >>> bool(jnp.max(jnp.abs(back - w)) <= jnp.max(scale) / 2)
  True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from blox.params import Param, Params, path_text

__all__ = [
    "QMAX", "QUANTIZED", "dequantize", "float_shape", "pack_int4", "quantize_array",
    "read_scales", "scale_path", "stored_format", "unpack_int4",
]

QMAX = {8: 127, 4: 7}
"""The largest integer magnitude stored for each bit width (symmetric)."""

QUANTIZED = "quantized"
"""The metadata key of a quantized weight, `(format, input axes)`: format
'int8' or 'int4' (packed), input axes the leading dims of one layer that the
product contracts (negative: the trailing ones, an embedding table's
features); its scale carries `QUANTIZED: 'scale'`."""


def scale_path(path: tuple[str, ...]) -> tuple[str, ...]:
  """Where the scales of the quantized weight at `path` are stored.

  Example:
    >>> scale_path(('lm', 'head', 'kernel'))
    ('lm', 'head', 'kernel_scale')
  """
  return path[:-1] + (path[-1] + "_scale",)


def stored_format(params: Params, path: tuple[str, ...]) -> tuple[str, int] | None:
  """`(format, input axes)` of the param at `path` if it is quantized, else None."""
  if path not in params:
    return None
  fmt = params[path].metadata.get(QUANTIZED)
  return fmt if isinstance(fmt, tuple) else None


def float_shape(param: Param) -> tuple[int, ...]:
  """The shape of the float weight that `param` stores: its own, but for a
  packed int4 weight, whose last axis holds two values per byte.

  Example:
    >>> import numpy as np
    >>> float_shape(Param(np.zeros((4, 3), np.uint8), False, {QUANTIZED: ('int4', 1)}))
    (4, 6)
  """
  shape = tuple(int(size) for size in param.value.shape)
  fmt = param.metadata.get(QUANTIZED)
  if isinstance(fmt, tuple) and fmt[0] == "int4":
    return (*shape[:-1], 2 * shape[-1])
  return shape


def read_scales(params: Params, path: tuple[str, ...], fmt: tuple[str, int]) -> tuple[jax.Array, Params]:
  """`(scales, params)` of the quantized weight at `path`, read as a layer
  reads its params (the read is recorded)."""
  where = scale_path(path)
  if where not in params:
    raise KeyError(
        f"{path_text(path)} is a quantized weight ({fmt[0]}) but its scales"
        f" {path_text(where)} are missing from the params; keep the params"
        " blox.models.quantize returned whole.")
  scale: jax.Array
  scale, params = params.get_or_create(where)
  return scale, params


def quantize_array(
    value: jax.Array, *, bits: int, input_axes: int, group_size: int | None, stacked: int,
) -> tuple[jax.Array, jax.Array]:
  """`(integers, scales)` of a float weight, in the stored format above.

  Args:
    value: the weight, `[*stacked dims, *input dims, *output dims]`, or
      `[*stacked dims, *output dims, *input dims]` for negative `input_axes`.
    bits: 8 or 4.
    input_axes: how many dims after the stacked ones the product contracts;
      negative: how many trailing dims it contracts (an embedding table).
    group_size: input rows per scale, or None for one scale per output channel.
    stacked: how many leading dims are stacked layer axes.

  Example:
    >>> q, s = quantize_array(jnp.array([[1.0, -2.0]]), bits=8, input_axes=1,
    ...                       group_size=None, stacked=0)
    >>> q.tolist(), s.tolist()
    ([[127, -127]], [[0.007874015718698502, 0.015748031437397003]])
    >>> q, s = quantize_array(jnp.array([[1.5, -2.0, 0.5, 4.0]]), bits=4, input_axes=-1,
    ...                       group_size=2, stacked=0)  # a table row: 2 groups of features
    >>> unpack_int4(q).tolist(), s.shape
    ([[5, -7, 1, 7]], (1, 2))
  """
  lead = value.shape[:stacked]
  qmax = QMAX[bits]
  if input_axes < 0:
    # A table `[*outputs, *inputs]`: groups cut the trailing input dims.
    outputs = value.shape[stacked:value.ndim + input_axes]
    rows = math.prod(value.shape[value.ndim + input_axes:])
    size = rows if group_size is None else group_size
    grouped = value.astype(jnp.float32).reshape(*lead, *outputs, rows // size, size)
    scale = _scale(jnp.max(jnp.abs(grouped), axis=-1), qmax)
    integers = jnp.clip(jnp.round(grouped / scale[..., None]), -qmax, qmax)
    scales = scale
  else:
    inputs = value.shape[stacked:stacked + input_axes]
    outputs = value.shape[stacked + input_axes:]
    rows, columns = math.prod(inputs), math.prod(outputs)
    size = rows if group_size is None else group_size
    grouped = value.astype(jnp.float32).reshape(*lead, rows // size, size, columns)
    scale = _scale(jnp.max(jnp.abs(grouped), axis=-2), qmax)
    integers = jnp.clip(jnp.round(grouped / scale[..., None, :]), -qmax, qmax)
    scales = scale.reshape(*lead, rows // size, *outputs)
  integers = integers.astype(jnp.int8).reshape(value.shape)
  if bits == 4:
    integers = pack_int4(integers)
  return integers, scales


def _scale(largest: jax.Array, qmax: int) -> jax.Array:
  """The symmetric scale of groups whose largest magnitude is `largest`."""
  # An all-zero group gets scale 1, not 0: its integers are 0 either way and
  # dividing by it stays finite.
  scale: jax.Array = jnp.where(largest > 0, largest / qmax, 1.0)
  return scale


def pack_int4(integers: jax.Array) -> jax.Array:
  """int8 values in `[-8, 7]` packed two per uint8 byte along the last axis
  (even index in the low nibble), which must have an even size.

  Example:
    >>> pack_int4(jnp.array([1, -1, 7, -8], jnp.int8)).tolist()
    [241, 135]
  """
  pairs = integers.reshape(*integers.shape[:-1], integers.shape[-1] // 2, 2)
  nibbles = jax.lax.bitcast_convert_type(pairs, jnp.uint8) & jnp.uint8(0x0F)
  packed: jax.Array = nibbles[..., 0] | (nibbles[..., 1] << jnp.uint8(4))
  return packed


def unpack_int4(packed: jax.Array) -> jax.Array:
  """The int8 values `pack_int4` packed: the last axis doubles again.

  Example:
    >>> unpack_int4(jnp.array([241, 135], jnp.uint8)).tolist()
    [1, -1, 7, -8]
  """
  nibbles = jnp.stack([packed & jnp.uint8(0x0F), packed >> jnp.uint8(4)], axis=-1)
  # Sign-extend the 4-bit two's complement nibble: x ^ 8 - 8 maps 8..15 to -8..-1.
  signed: jax.Array = (nibbles.astype(jnp.int8) ^ jnp.int8(8)) - jnp.int8(8)
  return signed.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def dequantize(weight: jax.Array, scale: jax.Array, *, input_axes: int) -> jax.Array:
  """The float weight from one layer's integers `weight` (already in the
  compute dtype, as the layer cast them) and its scales `[groups, *outputs]`;
  for negative `input_axes` (a table, or rows gathered from one) scales
  `[*outputs, groups]` and the last `-input_axes` dims grouped.

  Example:
    >>> dequantize(jnp.array([[2.0, -4.0]]), jnp.array([[0.5, 0.25]]), input_axes=1).tolist()
    [[1.0, -1.0]]
    >>> dequantize(jnp.array([[2.0, -4.0]]), jnp.array([[0.5, 0.25]]), input_axes=-1).tolist()
    [[1.0, -1.0]]
  """
  # The groups are cut from the weight by splitting one axis at a time, the
  # first input axis (the last for a table) where it holds whole groups:
  # on Explicit mesh axes a reshape may split a sharded axis (into a major
  # part that the mesh axes divide) but not merge one with its neighbours.
  scale = scale.astype(weight.dtype)
  groups = scale.shape[-1] if input_axes < 0 else scale.shape[0]
  if groups == 1:  # one scale per output channel: a plain broadcast
    return weight * (scale if input_axes < 0 else scale[0])
  if input_axes < 0:
    outputs = weight.shape[:weight.ndim + input_axes]
    grouped = weight.reshape(*outputs, groups, -1)
    return (grouped * scale[..., None]).reshape(weight.shape)
  inputs, outputs = weight.shape[:input_axes], weight.shape[input_axes:]
  ones = (1,) * (input_axes - 1)
  if inputs[0] % groups == 0:  # each group is whole entries of the first input axis
    grouped = weight.reshape(groups, inputs[0] // groups, *inputs[1:], *outputs)
    scales = scale.reshape(groups, 1, *ones, *outputs)
  elif groups % inputs[0] == 0:  # each entry of the first input axis holds whole groups
    per = groups // inputs[0]
    grouped = weight.reshape(inputs[0], per, -1, *outputs)
    scales = scale.reshape(inputs[0], per, 1, *outputs)
  else:
    grouped = weight.reshape(groups, -1, *outputs)
    scales = scale[:, None]
  return (grouped * scales).reshape(weight.shape)
