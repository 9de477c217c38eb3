"""Tests of `max_pool`, `min_pool` and `avg_pool` against `jax.lax.reduce_window`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.nn import avg_pool, max_pool, min_pool


def _random(shape: tuple[int, ...]) -> jax.Array:
  return jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)


def _full(spatial: tuple[Any, ...], lead: int, fill: Any) -> tuple[Any, ...]:
  """A per-axis argument for all axes: `fill` on batch and channel axes."""
  return (fill,) * lead + tuple(spatial) + (fill,)


POOL_CASES: list[tuple[str, tuple[int, ...], tuple[int, ...], Any, Any]] = [
    # (id, input shape, window, strides, padding); one batch axis unless noted
    ("1d_default_strides", (2, 8, 3), (2,), None, "VALID"),
    ("1d_overlapping", (2, 9, 3), (3,), 1, "VALID"),
    ("2d_valid", (2, 6, 7, 3), (2, 3), None, "VALID"),
    ("2d_same_stride1", (2, 5, 5, 2), (3, 3), (1, 1), "SAME"),
    ("2d_same_odd", (1, 5, 7, 2), (2, 2), (2, 2), "same"),
    ("2d_pairs", (1, 4, 5, 2), (2, 2), (1, 2), [(1, 0), (0, 1)]),
    ("2d_two_batch_axes", (2, 3, 4, 4, 2), (2, 2), None, "VALID"),
    ("2d_unbatched", (6, 6, 2), (3, 3), 2, "SAME"),
    ("3d", (1, 4, 4, 6, 2), (2, 2, 3), None, "VALID"),
]

REDUCERS: dict[str, tuple[Callable[..., jax.Array], Any, Callable[..., Any]]] = {
    "max": (max_pool, -jnp.inf, jax.lax.max),
    "min": (min_pool, jnp.inf, jax.lax.min),
}


def _reference_pads(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                    padding: Any) -> list[tuple[int, int]]:
  n = len(window)
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(shape[-n - 1 : -1], window, strides, padding.upper())
  return list(padding)


@pytest.mark.parametrize("kind", ["max", "min", "avg"])
@pytest.mark.parametrize(
    "shape,window,strides,padding", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES]
)
def test_pool_matches_reduce_window(
    kind: str, shape: tuple[int, ...], window: tuple[int, ...], strides: Any, padding: Any
) -> None:
  x = _random(shape)
  n = len(window)
  lead = len(shape) - n - 1
  steps = window if strides is None else (strides,) * n if isinstance(strides, int) else strides
  pads = _reference_pads(shape, window, steps, padding)
  dims, step_dims = _full(window, lead, 1), _full(steps, lead, 1)
  all_pads = [(0, 0)] * lead + list(pads) + [(0, 0)]
  if kind == "avg":
    y = avg_pool(x, window, strides, padding)
    reference = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, step_dims, all_pads) / np.prod(window)
  else:
    pool, init, op = REDUCERS[kind]
    y = pool(x, window, strides, padding)
    reference = jax.lax.reduce_window(x, init, op, dims, step_dims, all_pads)
  assert y.shape == reference.shape
  assert y.shape[:lead] == shape[:lead] and y.shape[-1] == shape[-1]
  np.testing.assert_allclose(y, reference, rtol=1e-6, atol=1e-6)


def test_max_pool_padding_never_wins_and_ints_work() -> None:
  x = -jnp.ones((1, 3, 1))
  # With zero padding the edges would read 0; padded positions must not count.
  np.testing.assert_array_equal(max_pool(x, (3,), 1, "SAME")[0, :, 0], [-1.0, -1.0, -1.0])
  ints = jnp.array([[3], [-7], [5], [2]], jnp.int32)
  assert max_pool(ints, (2,)).tolist() == [[3], [5]]
  assert min_pool(ints, (2,), 1, "SAME").dtype == jnp.int32
  assert min_pool(ints, (2,), 1, "SAME").tolist() == [[-7], [-7], [2], [2]]


def test_avg_pool_padding_count() -> None:
  x = jnp.ones((1, 4, 1))
  # Every window sum is divided by the window size: padded zeros count.
  included = avg_pool(x, (3,), 1, "SAME")
  np.testing.assert_allclose(included[0, :, 0], [2 / 3, 1.0, 1.0, 2 / 3], rtol=1e-6)
  # Without them, each window averages over its real positions only.
  excluded = avg_pool(x, (3,), 1, "SAME", count_include_pad=False)
  np.testing.assert_allclose(excluded[0, :, 0], [1.0, 1.0, 1.0, 1.0], rtol=1e-6)
  y = jnp.arange(8.0).reshape(2, 4, 1)
  expected = [[0.5, 1.0, 2.0, 2.5], [4.5, 5.0, 6.0, 6.5]]
  np.testing.assert_allclose(avg_pool(y, (3,), 1, "SAME", count_include_pad=False)[..., 0],
                             expected, rtol=1e-6)
  # Integer inputs average to floats.
  assert avg_pool(jnp.array([[1], [2]]), (2,)).tolist() == [[1.5]]


def test_pool_errors() -> None:
  x = jnp.ones((1, 4, 4, 2))
  with pytest.raises(TypeError, match="max_pool: window_shape must be a sequence"):
    max_pool(x, 2)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(ValueError, match="avg_pool: strides"):
    avg_pool(x, (2, 2), strides=(1, 1, 1))
  with pytest.raises(ValueError, match="min_pool: padding"):
    min_pool(x, (2, 2), padding="CIRCULAR")
  with pytest.raises(ValueError, match=r"max_pool: .*at least 4 axes"):
    max_pool(jnp.ones((4, 4)), (2, 2, 2))
  with pytest.raises(ValueError, match="window_shape"):
    max_pool(x, (0, 2))


@pytest.mark.parametrize("pool", [max_pool, min_pool, avg_pool], ids=["max", "min", "avg"])
def test_pool_under_jit_grad_vmap(pool: Callable[..., jax.Array]) -> None:
  x = _random((2, 4, 4, 3))

  def apply(inputs: jax.Array) -> jax.Array:
    return pool(inputs, (2, 2), padding="SAME", strides=1)

  y = apply(x)
  np.testing.assert_allclose(jax.jit(apply)(x), y, rtol=1e-6)
  grad = jax.grad(lambda inputs: jnp.sum(apply(inputs)))(x)
  assert grad.shape == x.shape and bool(jnp.any(grad != 0))
  ys = jax.vmap(apply)(jnp.stack([x, -x]))
  np.testing.assert_allclose(ys[0], y, rtol=1e-6)
  np.testing.assert_allclose(ys[1], apply(-x), rtol=1e-6)


@pytest.mark.parametrize(
    "pool",
    [max_pool, min_pool, avg_pool, functools.partial(avg_pool, count_include_pad=False)],
    ids=["max", "min", "avg", "avg_exclude_pad"],
)
def test_pool_jit_of_grad(pool: Callable[..., jax.Array]) -> None:
  # Under jit the init value must stay a constant, or reduce_window loses its
  # derivative ("Linearization failed").
  x = _random((1, 4, 4, 2))

  def loss(inputs: jax.Array) -> jax.Array:
    return jnp.sum(pool(inputs, (2, 2), strides=1, padding="SAME") ** 2)

  np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), jax.grad(loss)(x), rtol=1e-6)


@pytest.mark.parametrize(
    "shape,window,strides,padding", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES]
)
def test_avg_pool_without_padding_counts_matches_a_pooled_count(
    shape: tuple[int, ...], window: tuple[int, ...], strides: Any, padding: Any
) -> None:
  x = _random(shape)
  n = len(window)
  lead = len(shape) - n - 1
  steps = window if strides is None else (strides,) * n if isinstance(strides, int) else strides
  pads = [(0, 0)] * lead + list(_reference_pads(shape, window, steps, padding)) + [(0, 0)]
  dims, step_dims = _full(window, lead, 1), _full(steps, lead, 1)
  sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, step_dims, pads)
  counts = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, dims, step_dims, pads)
  y = avg_pool(x, window, strides, padding, count_include_pad=False)
  np.testing.assert_allclose(y, sums / counts, rtol=1e-6, atol=1e-6)


def test_avg_pool_negative_padding_and_bfloat16() -> None:
  x = jnp.arange(12.0).reshape(1, 6, 2)
  # Cropping one position on the left: windows (1, 2), (3, 4) and a partial (5, pad).
  y = avg_pool(x, (2,), 2, [(-1, 1)], count_include_pad=False)
  np.testing.assert_allclose(y[0, :, 0], [3.0, 7.0, 10.0], rtol=1e-6)
  half = avg_pool(x.astype(jnp.bfloat16), (2,), 2, [(-1, 1)], count_include_pad=False)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), y, rtol=1e-2)
