"""`rope`: rotary position embeddings (RoPE) for per-head queries and keys.

RoPE rotates pairs of features of every head by an angle proportional to the
token's position, so that the dot product of a rotated query and key depends
on their positions only through the difference (Su et al., RoFormer). The
pairing is the "rotate half" one of GPT-NeoX and LLaMA: feature `i` of the
first half pairs with feature `i + head_dim // 2` of the second half.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.ones((1, 3, 2, 4))  # [batch, length, heads, head_dim]
  >>> y = rope(x, jnp.arange(3))
  >>> y.shape, bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is unrotated
  ((1, 3, 2, 4), True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._checks import check_float_inputs

__all__ = ["apply_rope", "rope"]


def rope(x: jax.Array, positions: Any, *, base: float = 10000.0) -> jax.Array:
  """`x` with rotary position embeddings applied at `positions`.

  With `half = head_dim // 2`, frequencies `theta_i = base ** (-i / half)`
  for `i < half` and angle `a_i = position * theta_i`, the features
  `(x[i], x[i + half])` become
  `(x[i] cos a_i - x[i + half] sin a_i, x[i + half] cos a_i + x[i] sin a_i)`
  (the half-split "rotate_half" convention of GPT-NeoX/LLaMA, not the
  interleaved pairs `(x[2i], x[2i + 1])` of the original paper; the two are
  the same up to a fixed permutation of the features). The rotation is
  computed in float32 (float64 for float64 inputs) and cast back to x's dtype.

  Args:
    x: `[*batch, length, heads, head_dim]`, floating point, `head_dim` even.
    positions: integer positions `[*batch, length]`, or `[length]` shared by
      every batch element.
    base: the base of the frequencies; larger bases rotate more slowly.

  Returns:
    An array of x's shape and dtype.
  """
  return apply_rope(x, positions, base, "rope")


def apply_rope(x: jax.Array, positions: Any, base: float, where: str) -> jax.Array:
  """`rope`, with `where` naming the caller in errors (a layer's `where()`)."""
  dtype = check_float_inputs(x, where, "x")
  if jnp.ndim(x) < 3 or jnp.shape(x)[-1] % 2:
    raise ValueError(
        f"{where}: x needs shape [*batch, length, heads, head_dim] with an even"
        f" head_dim (features are rotated in pairs); got shape {jnp.shape(x)}."
        " Pick an even head_dim (qkv_size // num_heads for MultiHeadAttention)."
    )
  positions = jnp.asarray(positions)
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise TypeError(
        f"{where}: positions must be integers [*batch, length] or [length]; got"
        f" dtype {positions.dtype}. Use e.g. jnp.arange(length)."
    )
  length = x.shape[-3]
  batch = tuple(x.shape[:-3])
  if positions.shape not in ((length,), (*batch, length)):
    raise ValueError(
        f"{where}: positions of shape {positions.shape} do not match x of shape"
        f" {x.shape}; pass [*batch, length] = {(*batch, length)} or [length] ="
        f" {(length,)}."
    )
  compute = jnp.promote_types(dtype, jnp.float32)
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=compute) / half)
  # [..., length, 1 (heads), half]: one angle per position and frequency.
  angles = positions.astype(compute)[..., None, None] * frequencies
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(compute)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(dtype)
