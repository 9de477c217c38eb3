"""`rope`: rotary position embeddings (RoPE) for per-head queries and keys.

RoPE rotates pairs of features of every head by an angle proportional to the
token's position, so that the dot product of a rotated query and key depends
on their positions only through the difference (Su et al., RoFormer). The
pairing is the "rotate half" one of GPT-NeoX and LLaMA: feature `i` of the
first half pairs with feature `i + head_dim // 2` of the second half.

`rope_frequencies` gives the rotation frequencies, optionally rescaled for
contexts longer than the model was trained on (`RopeScaling`: linear
position interpolation, or Llama 3.1's rule); `rope` takes them in place of
its `base`.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.ones((1, 3, 2, 4))  # [batch, length, heads, head_dim]
  >>> y = rope(x, jnp.arange(3))
  >>> y.shape, bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is unrotated
  ((1, 3, 2, 4), True)
  >>> slow = rope_frequencies(4, scaling=RopeScaling('linear', factor=2.0))
  >>> slow.tolist(), bool(jnp.allclose(rope(x, jnp.arange(3) * 2, frequencies=slow), y))
  ([0.5, 0.004999999888241291], True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from blox.nn._checks import check_float_inputs

__all__ = ["RopeScaling", "apply_rope", "check_frequencies", "rope", "rope_frequencies"]

_KINDS = ("linear", "llama3")


def _positive(value: Any, name: str, where: str) -> None:
  """Raises ValueError unless `value` is a positive, finite real number."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
    raise ValueError(f"{where}: {name} must be a positive number, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How `rope_frequencies` rescales the rotary frequencies for long contexts.

  Attributes:
    kind: `'linear'` divides every frequency by `factor` (position
      interpolation: positions count `factor` times slower); `'llama3'` is
      Llama 3.1's rule, which rescales only the slow frequencies. With
      `wavelength = 2 pi / frequency`: a wavelength shorter than
      `original_max_position / high_freq_factor` keeps its frequency; one
      longer than `original_max_position / low_freq_factor` gets
      `frequency / factor`; in between, with `smooth =
      (original_max_position / wavelength - low_freq_factor) /
      (high_freq_factor - low_freq_factor)`, the frequency becomes
      `(1 - smooth) * frequency / factor + smooth * frequency`.
    factor: how many times longer the new context is, a positive number.
    low_freq_factor: `'llama3'` only, see `kind`; positive.
    high_freq_factor: `'llama3'` only, see `kind`; above `low_freq_factor`.
    original_max_position: `'llama3'` only: the context length the model was
      trained on, a positive int.

  Example:
    >>> RopeScaling('llama3', factor=8.0)
    RopeScaling(kind='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
  """

  kind: Literal["linear", "llama3"]
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def __post_init__(self) -> None:
    where = "RopeScaling"
    if self.kind not in _KINDS:
      raise ValueError(f"{where}: kind must be one of {_KINDS}, got {self.kind!r}.")
    for name in ("factor", "low_freq_factor", "high_freq_factor"):
      _positive(getattr(self, name), name, where)
    if self.high_freq_factor <= self.low_freq_factor:
      # The rule blends over the wavelengths between the two bounds, which
      # need high_freq_factor > low_freq_factor to be an interval.
      raise ValueError(
          f"{where}: high_freq_factor={self.high_freq_factor} must be larger than"
          f" low_freq_factor={self.low_freq_factor} (Llama 3.1 uses 4.0 and 1.0)."
      )
    position = self.original_max_position
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
      raise ValueError(
          f"{where}: original_max_position must be a positive int (the training"
          f" context length, e.g. 8192), got {position!r}."
      )


def rope_frequencies(
    head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None
) -> jax.Array:
  """The rotary frequencies `base ** (-2i / head_dim)`, `i < head_dim // 2`, rescaled.

  Args:
    head_dim: the (even) number of features of a head.
    base: the base of the frequencies; larger bases rotate more slowly.
    scaling: None for the plain frequencies, else how to rescale them (see
      `RopeScaling`).

  Returns:
    float32 `[head_dim // 2]`, for `rope(..., frequencies=...)`. Without
    `scaling` they are exactly the frequencies `rope(..., base=base)` uses.
  """
  where = "rope_frequencies"
  if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
    raise ValueError(
        f"{where}: head_dim must be a positive even int (features rotate in pairs),"
        f" got {head_dim!r}."
    )
  _positive(base, "base", where)
  if scaling is not None and not isinstance(scaling, RopeScaling):
    raise TypeError(
        f"{where}: scaling must be None or a RopeScaling, e.g."
        f" RopeScaling('llama3', factor=8.0); got {type(scaling).__name__}."
    )
  frequencies = _plain_frequencies(head_dim // 2, base, jnp.dtype(jnp.float32))
  if scaling is None:
    return frequencies
  if scaling.kind == "linear":
    return frequencies / scaling.factor
  # 'llama3'. Python numbers meet the float32 array as weak types, so every
  # step stays in float32, as the reference implementation computes it.
  wavelength = 2 * math.pi / frequencies
  kept_below = scaling.original_max_position / scaling.high_freq_factor
  scaled_above = scaling.original_max_position / scaling.low_freq_factor
  smooth = (scaling.original_max_position / wavelength - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  blended = (1 - smooth) * frequencies / scaling.factor + smooth * frequencies
  return jnp.where(
      wavelength < kept_below, frequencies,
      jnp.where(wavelength > scaled_above, frequencies / scaling.factor, blended),
  )


def _plain_frequencies(half: int, base: float, dtype: Any) -> jax.Array:
  """`base ** (-i / half)` for `i < half`, in `dtype` (the one formula of both
  `rope` and `rope_frequencies`, so that they agree bit for bit)."""
  return base ** (-jnp.arange(half, dtype=dtype) / half)


def rope(
    x: jax.Array, positions: Any, *, base: float = 10000.0, frequencies: Any = None
) -> jax.Array:
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
    frequencies: None, or `[head_dim // 2]` floats used as the `theta_i`
      instead of those of `base` (see `rope_frequencies`); they may be a
      traced array, different in every layer of a `blox.graph.Repeat`.

  Returns:
    An array of x's shape and dtype.
  """
  return apply_rope(x, positions, base, "rope", frequencies)


def check_frequencies(frequencies: Any, head_dim: int, where: str, name: str = "frequencies") -> None:
  """Raises unless `frequencies` (an argument `name`) is a float `[head_dim // 2]`."""
  dtype = jnp.result_type(frequencies)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{where}: {name} must be floating point [head_dim // 2], got dtype {dtype};"
        " make them with rope_frequencies(head_dim, base, scaling)."
    )
  if tuple(jnp.shape(frequencies)) != (head_dim // 2,):
    raise ValueError(
        f"{where}: {name} of shape {tuple(jnp.shape(frequencies))} do not fit a"
        f" head_dim of {head_dim}: one frequency per feature pair, shape"
        f" ({head_dim // 2},); make them with rope_frequencies({head_dim}, ...)."
    )


def apply_rope(
    x: jax.Array, positions: Any, base: float, where: str, frequencies: Any = None
) -> jax.Array:
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
  if frequencies is None:
    frequencies = _plain_frequencies(half, base, compute)
  else:
    check_frequencies(frequencies, x.shape[-1], where)
    frequencies = jnp.asarray(frequencies).astype(compute)
  # [..., length, 1 (heads), half]: one angle per position and frequency.
  angles = positions.astype(compute)[..., None, None] * frequencies
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(compute)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(dtype)
