"""The benchmarks' transformer (benchmarks/lm.py) is the examples' (examples/transformer_model.py).

The benchmarks keep their own copy of the model so that they never import
an example; BENCHMARKS.md reports its numbers as the examples' model's. So
both must create the same params (paths, shapes, dtypes) and compute the
same scores, over a whole sequence and in cached decoding, from the same
params.
"""

from __future__ import annotations

import pytest
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import blox as bx
from benchmarks import lm as bench
from examples import transformer_model as example

VOCAB = 40

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow


def sizes() -> tuple[example.Sizes, bench.Sizes]:
  fast = example.FAST
  fields = {f.name for f in dataclasses.fields(bench.Sizes)}
  shared = {name: getattr(fast, name) for name in fields}
  return fast, bench.Sizes(**shared)


def test_both_models_create_the_same_params() -> None:
  example_sizes, bench_sizes = sizes()
  _, example_init = example.build(example_sizes, VOCAB)
  _, bench_init = bench.build(bench_sizes, VOCAB)
  want = {path: (p.value.shape, p.value.dtype, p.trainable) for path, p in jax.eval_shape(example_init).items()}
  got = {path: (p.value.shape, p.value.dtype, p.trainable) for path, p in jax.eval_shape(bench_init).items()}
  assert list(got) == list(want)
  assert got == want


def test_both_models_compute_the_same_scores_from_the_same_params() -> None:
  example_sizes, bench_sizes = sizes()
  example_model, example_init = example.build(example_sizes, VOCAB)
  bench_model, _ = bench.build(bench_sizes, VOCAB)
  params = jax.jit(example_init)()
  ids = jax.random.randint(jax.random.key(3), (2, 12), 0, VOCAB)
  want, _ = jax.jit(example_model)(params, ids)
  got, _ = jax.jit(bench_model)(params, ids)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert float(jnp.std(want.astype(jnp.float32))) > 0  # the scores say something

  # Cached decoding, one token at a time from empty caches.
  assert isinstance(bench_model, bench.LanguageModel)
  example_caches, _ = example_model.initial_caches(params, ids, ids.shape[1])
  bench_caches, _ = bench_model.initial_caches(params, ids, ids.shape[1])
  example_step = jax.jit(example_model.decode_step)
  bench_step = jax.jit(bench_model.decode_step)
  for position in range(3):
    (want_step, example_caches), _ = example_step(params, ids[:, position], example_caches)
    (got_step, bench_caches), _ = bench_step(params, ids[:, position], bench_caches)
    np.testing.assert_array_equal(
        np.asarray(got_step, np.float32), np.asarray(want_step, np.float32), err_msg=str(position)
    )


def test_the_unrolled_model_computes_the_same_scores_from_restacked_params() -> None:
  _, bench_sizes = sizes()
  stacked_model, stacked_init = bench.build(bench_sizes, VOCAB)
  unrolled_model, unrolled_init = bench.build(bench_sizes, VOCAB, unrolled=True)
  stacked = jax.jit(stacked_init)()
  # Layer i of the stack is the unrolled model's block i.
  layer = ("lm", "model", "blocks", "layer")
  values = {}
  for path, param in stacked.items():
    if path[: len(layer)] == layer:
      for i in range(bench_sizes.num_layers):
        values[("lm", "model", f"block{i}", *path[len(layer):])] = bx.Param(param.value[i])
    else:
      values[path] = bx.Param(param.value)
  unrolled = jax.jit(unrolled_init)()
  assert set(values) == set(unrolled)
  unrolled = unrolled.replace_values(bx.Params(values))
  ids = jax.random.randint(jax.random.key(4), (2, 8), 0, VOCAB)
  want, _ = stacked_model(stacked, ids)
  got, _ = unrolled_model(unrolled, ids)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=0.05)
