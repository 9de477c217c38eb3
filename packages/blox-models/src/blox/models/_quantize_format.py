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
  (an output axis; the even entry in the low nibble, the odd one in the high
  nibble, two's complement), so that axis is halved. Packing an output axis
  leaves the input axes whole, which attention's checks of the input width
  read straight from the stored param;
- the scales, float32 `[groups, *output dims]`, beside it under the name
  `<weight>_scale`.

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

__all__ = ["QMAX", "dequantize", "pack_int4", "quantize_array", "unpack_int4"]

QMAX = {8: 127, 4: 7}
"""The largest integer magnitude stored for each bit width (symmetric)."""


def quantize_array(
    value: jax.Array, *, bits: int, input_axes: int, group_size: int | None, stacked: int,
) -> tuple[jax.Array, jax.Array]:
  """`(integers, scales)` of a float weight, in the stored format above.

  Args:
    value: the weight, `[*stacked dims, *input dims, *output dims]`.
    bits: 8 or 4.
    input_axes: how many dims after the stacked ones the product contracts.
    group_size: input rows per scale, or None for one scale per output channel.
    stacked: how many leading dims are stacked layer axes.

  Example:
    >>> q, s = quantize_array(jnp.array([[1.0, -2.0]]), bits=8, input_axes=1,
    ...                       group_size=None, stacked=0)
    >>> q.tolist(), s.tolist()
    ([[127, -127]], [[0.007874015718698502, 0.015748031437397003]])
  """
  lead = value.shape[:stacked]
  inputs = value.shape[stacked:stacked + input_axes]
  outputs = value.shape[stacked + input_axes:]
  rows, columns = math.prod(inputs), math.prod(outputs)
  size = rows if group_size is None else group_size
  grouped = value.astype(jnp.float32).reshape(*lead, rows // size, size, columns)
  qmax = QMAX[bits]
  largest = jnp.max(jnp.abs(grouped), axis=-2)
  # An all-zero group gets scale 1, not 0: its integers are 0 either way and
  # dividing by it stays finite.
  scale = jnp.where(largest > 0, largest / qmax, 1.0)
  integers = jnp.clip(jnp.round(grouped / scale[..., None, :]), -qmax, qmax).astype(jnp.int8)
  integers = integers.reshape(value.shape)
  scales = scale.reshape(*lead, rows // size, *outputs)
  if bits == 4:
    integers = pack_int4(integers)
  return integers, scales


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
  compute dtype, as the layer cast them) and its scales `[groups, *outputs]`.

  Example:
    >>> dequantize(jnp.array([[2.0, -4.0]]), jnp.array([[0.5, 0.25]]), input_axes=1).tolist()
    [[1.0, -1.0]]
  """
  outputs = weight.shape[input_axes:]
  groups = scale.shape[0]
  grouped = weight.reshape(groups, -1, *outputs)
  return (grouped * scale[:, None].astype(weight.dtype)).reshape(weight.shape)
