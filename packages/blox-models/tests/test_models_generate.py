"""`blox.models.generate`: greedy against transformers, ragged prompts, stop
tokens, the sampling distribution (a chi-square test) and one compilation."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_fixtures import FAMILIES, fixture_folder, load_reference

import blox.models as bm
from blox.models._sampling import filter_logits
from blox.params import Params

# Compiles many small programs (about a minute on 2 cores): with the
# end-to-end tests, `pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow


# The standard normal's 0.999 quantile: chi-square tests reject at 0.1%.
Z_999 = 3.090232306167813


def chi2_critical(dof: int) -> float:
  """The chi-square distribution's 0.999 quantile (Wilson-Hilferty; within 2% for dof >= 3)."""
  return float(dof * (1 - 2 / (9 * dof) + Z_999 * np.sqrt(2 / (9 * dof))) ** 3)


@functools.cache
def loaded(family: str) -> tuple[bm.CausalLM, Params]:
  return bm.load_pretrained(fixture_folder(family))


class Counting:
  """A `DecodingModel` around a `CausalLM` that counts its traces and its decode steps."""

  def __init__(self, model: bm.CausalLM) -> None:
    self.model = model
    self.traces = 0
    self.steps = 0

  def init_cache(self, batch_size: int, max_length: int) -> Any:
    return self.model.init_cache(batch_size, max_length)

  def prefill(
      self, params: Params, ids: jax.Array, cache: Any, *, lengths: jax.Array | None = None
  ) -> tuple[tuple[jax.Array, Any], Params]:
    self.traces += 1  # Runs when jit traces, not when the program runs.
    return self.model.prefill(params, ids, cache, lengths=lengths)

  def decode_step(
      self, params: Params, tokens: jax.Array, cache: Any
  ) -> tuple[tuple[jax.Array, Any], Params]:
    jax.debug.callback(self.count_step)  # Runs on every step of the device loop.
    return self.model.decode_step(params, tokens, cache)

  def count_step(self) -> None:
    self.steps += 1


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers_generate(family: str) -> None:
  model, params = loaded(family)
  reference = load_reference(family)
  tokens = bm.generate(model, params, reference.prompt_ids, max_new_tokens=16)
  assert tokens.dtype == jnp.int32 and tokens.shape == (2, 16)
  np.testing.assert_array_equal(tokens, reference.greedy_tokens)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ragged_prompts_give_each_row_what_it_gets_alone(family: str) -> None:
  model, params = loaded(family)
  reference = load_reference(family)
  prompts = np.array(reference.prompt_ids)
  # Junk in the padding, not pad ids: generate must ignore it either way.
  prompts[1, 5:] = [7, 9, 11]
  together = bm.generate(model, params, prompts, max_new_tokens=16, prompt_lengths=[8, 5])
  alone = bm.generate(model, params, prompts[1:, :5], max_new_tokens=16)
  # Row 0 is whole: alone, it gets transformers' greedy tokens.
  np.testing.assert_array_equal(together[0], reference.greedy_tokens[0])
  np.testing.assert_array_equal(together[1], alone[0])
  assert not np.array_equal(together[1], reference.greedy_tokens[1])  # the lengths mattered


def test_rows_are_padded_after_their_first_stop_token_and_the_loop_ends_early() -> None:
  model, params = loaded("llama")
  reference = load_reference("llama")
  greedy = reference.greedy_tokens
  stops = (int(greedy[0, 2]), int(greedy[1, 4]))
  counting = Counting(model)
  tokens = np.asarray(bm.generate(
      counting, params, reference.prompt_ids, max_new_tokens=16, stop_tokens=stops, pad_id=-1))
  ends = []
  for row in range(2):
    end = int(np.flatnonzero(np.isin(greedy[row], stops))[0])
    ends.append(end)
    np.testing.assert_array_equal(tokens[row, : end + 1], greedy[row, : end + 1])
    assert (tokens[row, end + 1 :] == -1).all(), (row, tokens[row])
  # Step 0 comes from the prefill; one decode step per token after it, up
  # to the last row's stop token, and none after.
  assert counting.steps == max(ends) < 15


def test_sampling_is_deterministic_per_seed_and_rows_draw_independently() -> None:
  model, params = loaded("llama")
  prompts = np.repeat(load_reference("llama").prompt_ids[:1], 4, axis=0)

  def sample(seed: int) -> np.ndarray:
    return np.asarray(bm.generate(
        model, params, prompts, max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed))

  first, again, other = sample(0), sample(0), sample(1)
  np.testing.assert_array_equal(first, again)
  assert (first != other).any()
  # Identical prompts, yet each row has its own draws.
  assert len({tuple(row) for row in first}) == 4


def test_one_compilation_serves_new_seeds_temperatures_and_filter_values() -> None:
  model, params = loaded("qwen3")
  counting = Counting(model)
  prompts = load_reference("qwen3").prompt_ids
  calls = [
      dict(seed=0, temperature=1.5, top_k=30, stop_tokens=(5,), prompt_lengths=[8, 8]),
      dict(seed=1, temperature=0.9, top_k=7, stop_tokens=(9,), prompt_lengths=[8, 6]),
      dict(seed=2, temperature=0.4, top_k=1, stop_tokens=(2,), prompt_lengths=[3, 8], pad_id=4),
  ]
  outputs = [np.asarray(bm.generate(counting, params, prompts, max_new_tokens=6, **call))
             for call in calls]
  assert counting.traces == 1
  assert not np.array_equal(outputs[0], outputs[1])
  # top_k=1 is greedy, at any temperature.
  greedy = bm.generate(counting, params, prompts, max_new_tokens=6, prompt_lengths=[3, 8])
  assert counting.traces == 2  # greedy is a program of its own, without sampling
  np.testing.assert_array_equal(outputs[2][:, 0], greedy[:, 0])


def test_generate_runs_inside_an_outer_jit() -> None:
  model, params = loaded("llama")
  reference = load_reference("llama")

  @jax.jit
  def greedy(params: Params, prompts: jax.Array, lengths: jax.Array) -> jax.Array:
    return bm.generate(model, params, prompts, max_new_tokens=4, prompt_lengths=lengths,
                       temperature=0.0, top_k=5, seed=1)

  lengths = np.full((2,), reference.prompt_ids.shape[1], np.int32)
  np.testing.assert_array_equal(
      greedy(params, reference.prompt_ids, lengths), reference.greedy_tokens[:, :4])


def test_a_model_changed_in_place_is_traced_again() -> None:
  model, params = bm.load_pretrained(fixture_folder("llama"))
  prompts = load_reference("llama").prompt_ids
  before = np.asarray(bm.generate(model, params, prompts, max_new_tokens=4))
  # add_lora installs its hooks on this very model object: the program
  # traced before must not answer for it (it would give the base's tokens).
  model, adapted = bm.add_lora(model, params, targets=r".*mlp/down", rank=2, alpha=2)
  with pytest.raises(ValueError, match="lora"):
    bm.generate(model, params, prompts, max_new_tokens=4)
  down = ("model", "lm", "layers", "layer", "mlp", "down", "lora_b")
  nudged = adapted.set(down, adapted[down].value + 1.0)
  assert (np.asarray(bm.generate(model, nudged, prompts, max_new_tokens=4)) != before).any()


def reference_filter(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
    min_p: float | None,
) -> np.ndarray:
  """Hugging Face's warpers in numpy (float64): the distribution sampled from."""
  x = logits.astype(np.float64) / temperature
  if top_k is not None:
    x = np.where(x >= np.sort(x)[::-1][top_k - 1], x, -np.inf)
  if top_p is not None and top_p < 1:
    order = np.argsort(-x, kind="stable")
    p = softmax(x)[order]
    keep = np.cumsum(p) - p < top_p
    keep[0] = True
    x[order[~keep]] = -np.inf
  if min_p is not None:
    p = softmax(x)
    x = np.where(p >= min_p * p.max(), x, -np.inf)
  return softmax(x)


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  probabilities: np.ndarray = e / e.sum(axis=-1, keepdims=True)
  return probabilities


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"),
    [(None, None, None), (5, None, None), (None, 0.3, None), (None, None, 0.5), (40, 0.8, 0.2)])
def test_filter_logits_keeps_what_hugging_face_keeps(
    top_k: int | None, top_p: float | None, min_p: float | None) -> None:
  logits = np.random.default_rng(0).normal(size=(6, 100)).astype(np.float32) * 2
  filtered = filter_logits(
      jnp.asarray(logits), top_k=None if top_k is None else jnp.int32(top_k),
      top_p=None if top_p is None else jnp.float32(top_p),
      min_p=None if min_p is None else jnp.float32(min_p))
  for row in range(6):
    expected = reference_filter(logits[row], 1.0, top_k, top_p, min_p) > 0
    np.testing.assert_array_equal(np.isfinite(filtered[row]), expected)
    if top_k is not None or top_p is not None or min_p is not None:
      assert 0 < expected.sum() < 100  # the filter did drop something, not all


def test_filters_at_their_off_values_keep_every_token() -> None:
  # So peaked that float32's running sum of probabilities is 1 after the first.
  logits = jnp.zeros((1, 50)).at[0, 3].set(40.0)
  assert float(jax.nn.softmax(logits)[0, 3]) == 1.0
  filtered = filter_logits(logits, top_k=jnp.int32(50), top_p=jnp.float32(1.0),
                           min_p=jnp.float32(0.0))
  np.testing.assert_array_equal(filtered, logits)
  # Just below 1, the tail goes: the check above is not vacuous.
  assert int(jnp.isfinite(filter_logits(logits, top_p=jnp.float32(0.999))).sum()) == 1


# Every filter on, those not under test at their "off" values (top_k=vocab,
# top_p=1, min_p=0): the four cases share one compiled program.
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [(0.5, 10, 1.0, 0.0), (0.8, 128, 0.5, 0.0), (0.7, 128, 1.0, 0.3), (0.9, 20, 0.7, 0.2)])
def test_first_sampled_token_follows_the_filtered_distribution(
    temperature: float, top_k: int, top_p: float, min_p: float) -> None:
  model, params = loaded("llama")
  prompt = load_reference("llama").prompt_ids[:1]
  rows = 4000
  tokens = bm.generate(
      model, params, np.repeat(prompt, rows, axis=0), max_new_tokens=1, temperature=temperature,
      top_k=top_k, top_p=top_p, min_p=min_p, seed=7)
  logits, _ = model(params, jnp.asarray(prompt))
  expected = reference_filter(np.asarray(logits[0, -1]), temperature, top_k, top_p, min_p) * rows
  observed = np.bincount(np.asarray(tokens[:, 0]), minlength=expected.size).astype(np.float64)
  # Dropped tokens never come up.
  assert observed[expected == 0].sum() == 0
  # Tokens expected fewer than 5 times are pooled into one bin, as the
  # chi-square approximation needs.
  small = (expected > 0) & (expected < 5)
  bins_expected = np.append(expected[expected >= 5], expected[small].sum())
  bins_observed = np.append(observed[expected >= 5], observed[small].sum())
  if bins_expected[-1] == 0:
    bins_expected, bins_observed = bins_expected[:-1], bins_observed[:-1]
  statistic = float(((bins_observed - bins_expected) ** 2 / bins_expected).sum())
  dof = bins_expected.size - 1
  assert dof >= 3
  assert statistic < chi2_critical(dof), (statistic, dof)
  # The test has power: the tokens' unfiltered softmax at this temperature is rejected.
  plain = reference_filter(np.asarray(logits[0, -1]), temperature, None, None, None) * rows
  assert ((observed - plain) ** 2 / plain).sum() > chi2_critical(plain.size - 1)


def test_invalid_arguments_say_what_to_pass() -> None:
  model, params = loaded("llama")
  prompts = load_reference("llama").prompt_ids
  with pytest.raises(ValueError, match="prompt_lengths run from 1 to 9"):
    bm.generate(model, params, prompts, max_new_tokens=2, prompt_lengths=[1, 9])
  with pytest.raises(ValueError, match=r"top_p=0.0 is outside \(0.0, 1.0\]"):
    bm.generate(model, params, prompts, max_new_tokens=2, temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens=0"):
    bm.generate(model, params, prompts, max_new_tokens=0)
  with pytest.raises(ValueError, match=r"Add a batch axis"):
    bm.generate(model, params, prompts[0], max_new_tokens=2)
  with pytest.raises(TypeError, match="lacks the decoding interface"):
    bm.generate(object(), params, prompts, max_new_tokens=2)  # type: ignore[arg-type]
