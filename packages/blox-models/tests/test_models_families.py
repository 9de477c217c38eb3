"""Every family against `transformers`: logits, greedy decoding, and the round trips.

The references were computed by `transformers` (torch, float32) from the
committed fixture folders (scripts/make_model_fixtures.py); these tests need
neither. test_models_interop.py recomputes them live when the interop group
is installed.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_fixtures import FAMILIES, fixture_folder, greedy_tokens, load_reference

import blox.models as bm
from blox.params import Params
from blox.models._safetensors_read import CheckpointFiles

# transformers' float32 logits against blox's, over every real (unpadded) position.
LOGITS_ATOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_on_a_padded_batch(family: str) -> None:
  model, params = bm.load_pretrained(fixture_folder(family))
  reference = load_reference(family)
  logits, _ = jax.jit(lambda p, ids, mask: model(p, ids, mask=mask))(
      params, reference.input_ids, reference.attention_mask)
  assert logits.dtype == jnp.float32
  real = reference.attention_mask.astype(bool)
  difference = np.abs(np.asarray(logits) - reference.logits)[real]
  assert difference.max() < LOGITS_ATOL, (family, difference.max())


@pytest.mark.slow  # a compilation per family; with `pytest -m slow`
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_through_the_cache_matches_transformers_generate(family: str) -> None:
  model, params = bm.load_pretrained(fixture_folder(family))
  reference = load_reference(family)
  tokens = greedy_tokens(model, params, jnp.asarray(reference.prompt_ids), 16)
  np.testing.assert_array_equal(tokens, reference.greedy_tokens)


@pytest.mark.slow  # a compilation per family; with `pytest -m slow`
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_the_whole_forward(family: str) -> None:
  # Gemma's fixtures repeat one token greedily; compare logits, not only tokens.
  model, params = bm.load_pretrained(fixture_folder(family))
  ids = jnp.asarray(load_reference(family).input_ids[:1, :12])
  whole, _ = jax.jit(model)(params, ids)
  cache = model.init_cache(1, 12)
  (prefix, cache), _ = jax.jit(model.prefill)(params, ids[:, :7], cache)
  decode_step = jax.jit(model.decode_step)
  steps = []
  for position in range(7, 12):
    (logits, cache), _ = decode_step(params, ids[:, position], cache)
    steps.append(logits)
  np.testing.assert_allclose(prefix, whole[:, :7], atol=1e-5)
  np.testing.assert_allclose(jnp.stack(steps, 1), whole[:, 7:], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_writes_the_checkpoint_bit_for_bit(family: str, tmp_path: pathlib.Path) -> None:
  model, params = bm.load_pretrained(fixture_folder(family))
  written = bm.save_pretrained(model, params, tmp_path, max_shard_size="60KB")
  assert (tmp_path / "model.safetensors.index.json") in written
  with CheckpointFiles(fixture_folder(family)) as original, CheckpointFiles(tmp_path) as saved:
    # GPT-2 files carry causal-mask buffers that are not weights.
    weights = [n for n in original.names if not n.endswith((".attn.bias", ".attn.masked_bias"))]
    assert sorted(weights) == sorted(saved.names)
    for name in weights:
      a, b = original.read(name), saved.read(name)
      assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
  again, reloaded = bm.load_pretrained(tmp_path)
  assert again.architecture == model.architecture
  assert list(reloaded) == list(params)
  for path, param in params.items():
    assert np.asarray(reloaded[path].value).tobytes() == np.asarray(param.value).tobytes(), path
    assert reloaded[path].metadata == param.metadata


def test_params_name_their_logical_axes() -> None:
  _, params = bm.load_pretrained(fixture_folder("qwen3"))
  root = ("model", "lm")
  assert params[(*root, "embed", "embedding")].sharding == ("vocab", "embed")
  layer = (*root, "layers", "layer", "attention")
  assert params[(*layer, "query", "kernel")].sharding == ("embed", "heads", "head_dim")
  assert params[(*layer, "key", "kernel")].sharding == ("embed", "kv_heads", "head_dim")
  assert params[(*layer, "out", "kernel")].sharding == ("heads", "head_dim", "embed")
  assert params[(*root, "layers", "layer", "mlp", "gate", "kernel")].sharding == ("embed", "mlp")
  # The stack's layer axis comes first and is tagged, not named.
  assert params[(*layer, "query", "kernel")].value.shape == (2, 32, 4, 16)
  used = {name for param in params.values() for name in (param.sharding or ()) if name}
  assert used <= {name for name, _ in bm.SHARDING_RULES}


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_a_left_padded_row_with_its_positions_computes_as_if_unpadded(family: str) -> None:
  model, params = bm.load_pretrained(fixture_folder(family))
  ids = jnp.asarray(load_reference(family).input_ids[:1, :10])
  alone, _ = model(params, ids)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids], axis=1)
  mask = (jnp.arange(13) >= 3)[None]
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
  logits, _ = model(params, padded, mask=mask, positions=positions)
  np.testing.assert_allclose(logits[:, 3:], alone, atol=1e-5)
