"""`soft_cap`: a smooth bound on logits, `cap * tanh(x / cap)`.

Near zero it is the identity (its slope there is 1), and it never leaves
`(-cap, cap)`: a large logit is squashed instead of clipped, so its gradient
stays non-zero. Gemma 2 caps its attention logits and its final logits so.

Example:
  >>> import jax.numpy as jnp
  >>> [round(v, 3) for v in soft_cap(jnp.array([0.1, 5.0, 1000.0]), 30.0).tolist()]
  [0.1, 4.954, 30.0]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._checks import check_float_inputs

__all__ = ["check_cap", "soft_cap", "soft_cap_in"]


def check_cap(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is a positive (finite) number."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
    raise ValueError(
        f"{where}: {name} must be a positive number such as 50.0 (logits are"
        f" bounded to (-{name}, {name})), got {value!r}."
    )
  return value


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
  """`cap * tanh(x / cap)`, elementwise.

  Args:
    x: floating-point logits of any shape.
    cap: the bound, a positive number: the outputs lie in `(-cap, cap)`.

  Returns:
    An array of x's shape and dtype. The division and the tanh are computed
    in float32 at least (float64 for float64 inputs): in bfloat16 the
    division alone would lose three of the eight significant bits.
  """
  where = "soft_cap"
  dtype = check_float_inputs(x, where, "x")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{where}: x must be real floating point, got dtype {dtype}.")
  check_cap(cap, "cap", where)
  return soft_cap_in(jnp.asarray(x).astype(jnp.promote_types(dtype, jnp.float32)), cap).astype(dtype)


def soft_cap_in(x: jax.Array, cap: float) -> jax.Array:
  """`cap * tanh(x / cap)` in x's own dtype, with the checks done by the
  caller (attention applies it to its float32 logits)."""
  bound = jnp.asarray(cap, x.dtype)
  return bound * jnp.tanh(x / bound)
