"""What the recurrent cells (LSTM, GRU) share: their zero state and input check.

Example:
  >>> import jax.numpy as jnp
  >>> zero_hidden(jnp.ones((2, 3), jnp.bfloat16), 4).dtype
  dtype('float32')
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def zero_hidden(inputs: jax.Array, hidden_size: int) -> jax.Array:
  """Zeros `[*batch, hidden_size]` for one step of inputs `[*batch, features]`.

  The gate kernels are float32, so a step's outputs promote to at least that;
  the state starts in that dtype so that a `lax.scan` carry keeps its dtype.
  """
  shape = jnp.shape(inputs)[:-1] + (hidden_size,)
  return jnp.zeros(shape, jnp.result_type(inputs, jnp.float32))


def check_step_inputs(inputs: jax.Array, where: str) -> None:
  """Raises `ValueError` for a scalar: one step needs `[batch, features]`."""
  if jnp.ndim(inputs) < 1:
    raise ValueError(
        f"{where}: one step of inputs needs a feature axis, [batch, features];"
        " got a scalar."
    )
