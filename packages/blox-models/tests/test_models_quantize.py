"""`blox.models.quantize`: int8 / int4 kernels that run, shrink, save and shard.

On the llama fixture (untied head) and the gpt2 fixture (head tied to the
embedding table, learned positions), and a wider random model for the byte
targets: logits near the float model's, kernel and table bytes at most 0.27x
(int8) and 0.15x (int4, group_size=64) of float32, `bx.summary` showing
those bytes, embedding lookups that dequantize only the rows they gather, a
`bx.save` / `bx.load` round trip, the sharded forward on a (4, 2) mesh of 8
simulated devices, the stacked layout of `Repeat`, and the errors.
"""

from __future__ import annotations

import os

# Before jax is imported: the 8 simulated devices of the sharding test.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from models_fixtures import fixture_folder, load_reference

import blox as bx
import blox.models as bm
import blox.parallel as bp
from blox.models._quantize import QUANTIZED, scale_path
from blox.models._quantize_format import dequantize, unpack_int4
from blox.params import SHARDING, STACKED, Params

# Compiles many small programs (about a minute on 2 cores): with the
# end-to-end tests, `pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

LAYER = ("model", "lm", "layers", "layer")
UP = LAYER + ("mlp", "up", "kernel")
OUT = LAYER + ("attention", "out", "kernel")
HEAD = ("model", "lm", "head", "kernel")
TABLE = ("model", "lm", "embed", "embedding")

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

WIDE = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def llama() -> tuple[Any, Params, jax.Array]:
  model, params = bm.load_pretrained(fixture_folder("llama"))
  return model, params, jnp.asarray(load_reference("llama").input_ids)


def _fresh(params: Params) -> Any:
  """A new model object for the fixture (quantize installs hooks on its model)."""
  model, _ = bm.load_pretrained(fixture_folder("llama"))
  return model


def test_logits_close_to_float_int8_and_int4(llama: tuple[Any, Params, jax.Array]) -> None:
  model, params, ids = llama
  forward = jax.jit(lambda p: model(p, ids)[0])
  logits = forward(params)
  scale = float(jnp.max(jnp.abs(logits)))
  model, int8 = bm.quantize(model, params, bits=8)
  _, int4 = bm.quantize(model, params, bits=4, group_size=16)
  int8_error = float(jnp.max(jnp.abs(forward(int8) - logits))) / scale
  int4_error = float(jnp.max(jnp.abs(forward(int4) - logits))) / scale
  assert int8_error < 0.02, int8_error
  # The fixture's random weights give nearly flat logits: a loose bound.
  assert int4_error < 0.35, int4_error
  assert int8_error < int4_error
  # The untied model's embedding table: one scale per vocabulary row (per
  # 16 features for int4, packed along the features).
  assert int8[TABLE].value.dtype == jnp.int8 and int8[TABLE].metadata[QUANTIZED] == ("int8", -1)
  assert int8[scale_path(TABLE)].value.shape == (128, 1)
  assert int4[TABLE].value.shape == (128, 16) and int4[scale_path(TABLE)].value.shape == (128, 2)
  # The same model still runs the float params (eager: the jitted forward
  # would reuse its trace from before the hooks).
  np.testing.assert_allclose(model(params, ids)[0], logits, rtol=1e-5, atol=1e-5)
  mask = jnp.asarray(load_reference("llama").attention_mask)
  report = bm.quantization_report(model, params, int8, ids, mask=mask)
  assert report.agreement >= 0.99 and abs(report.loss_change) <= 0.01, report
  # Top-1 of a random model's near-uniform logits flips easily (measured 0.76
  # agreement); the loss, which the flat logits barely move, stays within 5%.
  report4 = bm.quantization_report(model, params, int4, ids, mask=mask)
  assert report4.agreement >= 0.6 and abs(report4.loss_change) <= 0.05, report4


def _kernel_bytes(float_params: Params, quantized: Params) -> tuple[int, int]:
  """(float32 bytes of the kernels replaced, bytes of their integers and scales)."""
  before = after = 0
  for path, param in quantized.items():
    if isinstance(param.metadata.get(QUANTIZED), tuple):
      before += float_params[path].value.size * 4
      after += param.value.nbytes + quantized[scale_path(path)].value.nbytes
  return before, after


def test_kernel_bytes_targets() -> None:
  model, params = bm.create(WIDE)
  _, int8 = bm.quantize(model, params, bits=8)
  before, after = _kernel_bytes(params, int8)
  assert before == 4 * sum(
      params[p].value.size for p in params if p[-1] in ("kernel", "embedding"))
  assert after <= 0.27 * before, after / before
  _, int4 = bm.quantize(model, params, bits=4, group_size=64)
  before4, after4 = _kernel_bytes(params, int4)
  assert before4 == before and after4 <= 0.15 * before, after4 / before
  assert int4[UP].value.dtype == jnp.uint8 and int4[UP].value.shape == (2, 128, 128)
  table = str(bx.summary(int4))
  row = next(line for line in table.splitlines() if line.strip().startswith("up/kernel")
             or (line.strip().startswith("kernel ") and "uint8" in line and "128, 128" in line))
  assert f"{int4[UP].value.nbytes:,}" in row and "uint8" in row
  row = next(line for line in table.splitlines() if line.strip().startswith("embedding "))
  assert f"{int4[TABLE].value.nbytes:,}" in row and "uint8" in row and "256, 64" in row


def test_stacked_metadata_trainable_and_twice(llama: tuple[Any, Params, jax.Array]) -> None:
  _, params, _ = llama
  model, quantized = bm.quantize(_fresh(params), params, bits=4, group_size=16)
  kernel, scale = quantized[OUT], quantized[scale_path(OUT)]
  assert kernel.metadata[STACKED] == (2,) and scale.metadata[STACKED] == (2,)
  assert kernel.metadata[QUANTIZED] == ("int4", 2)
  # out [layers, heads=4, head_dim=8, embed=32]: 32 rows in 2 groups of 16.
  assert kernel.value.shape == (2, 4, 8, 16) and scale.value.shape == (2, 2, 32)
  assert kernel.metadata[SHARDING] == params[OUT].metadata[SHARDING]
  assert scale.metadata[SHARDING] == ("heads", "embed")
  assert not any(param.trainable for param in quantized.values())
  with pytest.raises(ValueError, match="already quantized"):
    bm.quantize(model, quantized, bits=8)


def test_save_load_round_trip(llama: tuple[Any, Params, jax.Array], tmp_path: pathlib.Path) -> None:
  _, params, ids = llama
  model, quantized = bm.quantize(_fresh(params), params, bits=4, group_size=16)
  bx.save(tmp_path / "q.blox", quantized)
  loaded = bx.load(tmp_path / "q.blox")
  assert list(loaded) == list(quantized)
  for path, param in quantized.items():
    assert loaded[path].value.dtype == param.value.dtype, path
    assert loaded[path].metadata == param.metadata, path
    np.testing.assert_array_equal(loaded[path].value, param.value)
  # A new model object runs them once told to.
  other = bm.enable_quantized_weights(_fresh(params))
  np.testing.assert_array_equal(other(loaded, ids)[0], model(quantized, ids)[0])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_forward_and_save_load_on_a_mesh(
    llama: tuple[Any, Params, jax.Array], tmp_path: pathlib.Path,
) -> None:
  _, params, ids = llama
  model = _fresh(params)
  _, int8 = bm.quantize(model, params, bits=8)
  # group_size=4: 8 groups of the out projection's 32 rows (2 per head) and
  # of up's; on Explicit axes dequantizing must split no sharded axis badly.
  _, quantized = bm.quantize(model, params, bits=4, group_size=4)
  mesh = bp.make_mesh((4, 2), ("data", "model"))  # Explicit axes
  shardings = bp.param_shardings(quantized, mesh, bm.SHARDING_RULES)
  up_scale = scale_path(UP)
  assert shardings[UP].value.spec == P(None, "data", "model")
  assert shardings[up_scale].value.spec == P(None, "data", "model")
  assert shardings[scale_path(OUT)].value.spec == P(None, "model", "data")
  # The table [vocab, features / 2] and its scales [vocab, 8 groups] alike.
  assert shardings[TABLE].value.spec == P("model", "data")
  assert shardings[scale_path(TABLE)].value.spec == P("model", "data")
  placed = jax.device_put(quantized, shardings)
  assert placed[up_scale].value.sharding.spec == P(None, "data", "model")
  unsharded = jax.jit(lambda p: model(p, ids)[0])
  expected = [np.asarray(unsharded(p)) for p in (int8, quantized)]
  with jax.set_mesh(mesh):
    forward = jax.jit(lambda p: model(p, ids)[0])
    int8_logits = forward(jax.device_put(int8, bp.param_shardings(int8, mesh, bm.SHARDING_RULES)))
    logits = forward(placed)
    # One scale per output channel, then groups.
    np.testing.assert_allclose(np.asarray(int8_logits), expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), expected[1], rtol=1e-5, atol=1e-5)
    bx.save(tmp_path / "sharded.blox", placed)
    loaded = bx.load(tmp_path / "sharded.blox", shardings=shardings)
    for path, param in placed.items():
      assert loaded[path].metadata == param.metadata, path
      assert loaded[path].value.sharding == param.value.sharding, path
      np.testing.assert_array_equal(np.asarray(loaded[path].value), np.asarray(param.value))
    np.testing.assert_array_equal(np.asarray(forward(loaded)), np.asarray(logits))


def test_embed_lookup_dequantizes_only_the_rows_it_gathers(
    llama: tuple[Any, Params, jax.Array],
) -> None:
  _, params, _ = llama
  model = _fresh(params)
  _, int4 = bm.quantize(model, params, bits=4, group_size=16)  # hooks the same object
  embed = model.embed
  ids = jnp.array([[3, -1, 127, 128]])  # negative from the end; 128 is out of range
  rows, _ = embed(int4, ids)
  scales = int4[scale_path(TABLE)].value
  whole = dequantize(unpack_int4(int4[TABLE].value).astype(jnp.float32), scales, input_axes=-1)
  picked = jnp.array([3, 127, 127])
  np.testing.assert_array_equal(rows[0, :3], whole[picked])
  assert bool(jnp.isnan(rows[0, 3]).all())
  # Within half a step of the float rows; float params still run as before.
  table = params[TABLE].value
  step = jnp.repeat(scales[picked], 16, axis=-1)
  assert bool((jnp.abs(rows[0, :3] - table[picked]) <= step / 2 + 1e-6).all())
  float_rows, _ = embed(params, ids)
  np.testing.assert_array_equal(float_rows[0, :3], table[picked])
  # Traced, no array of the whole table's [vocab, features] is ever made:
  # the lookup gathers the packed rows and their scales, then dequantizes.
  jaxpr = jax.make_jaxpr(lambda p: embed(p, ids)[0])(int4)
  shapes = {tuple(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars}
  assert (128, 32) not in shapes and (1, 4, 32) in shapes, shapes


def test_gpt2_tied_head_and_positions() -> None:
  model, params = bm.load_pretrained(fixture_folder("gpt2"))
  reference = load_reference("gpt2")
  ids, mask = jnp.asarray(reference.input_ids), jnp.asarray(reference.attention_mask)
  assert HEAD not in params  # the head is the embedding table (Embed.attend)
  forward = jax.jit(lambda p: model(p, ids, mask=mask)[0])
  real = np.asarray(reference.attention_mask).astype(bool)
  logits = np.asarray(forward(params))[real]
  scale = float(np.max(np.abs(logits)))
  _, int8 = bm.quantize(model, params, bits=8)  # the same model object, now hooked
  _, int4 = bm.quantize(model, params, bits=4, group_size=16)
  int8_error, int4_error = (
      float(np.max(np.abs(np.asarray(forward(q))[real] - logits))) / scale for q in (int8, int4))
  # Measured 0.019 and 0.32: the table is quantized twice over here, as the
  # lookup's rows and as the head's columns.
  assert int8_error < 0.02 and int4_error < 0.35, (int8_error, int4_error)
  for name in ("embed", "positions"):
    table = int4[("model", "lm", name, "embedding")]
    assert table.value.dtype == jnp.uint8 and table.value.shape == (128, 16), name
    assert table.metadata[QUANTIZED] == ("int4", -1) and not table.trainable, name


def test_targets_and_errors(llama: tuple[Any, Params, jax.Array]) -> None:
  _, params, _ = llama
  model, only_mlp = bm.quantize(_fresh(params), params, bits=8, targets="mlp/(up|gate)")
  assert only_mlp[UP].value.dtype == jnp.int8 and only_mlp[HEAD].value.dtype == jnp.float32
  assert scale_path(OUT) not in only_mlp
  with pytest.raises(ValueError, match="bits must be 8 or 4"):
    bm.quantize(model, params, bits=3)
  with pytest.raises(ValueError, match="group_size=24 does not divide"):
    bm.quantize(model, params, bits=8, group_size=24)
  with pytest.raises(ValueError, match="bits=4 needs a group_size"):
    bm.quantize(model, params, bits=4)
  with pytest.raises(ValueError, match="matches no Linear, MultiHeadAttention or Embed.*final_norm"):
    bm.quantize(model, params, targets="final_norm")
  _, only_embed = bm.quantize(model, params, bits=8, targets="lm/embed$")
  assert [path for path in only_embed if path[-1].endswith("_scale")] == [scale_path(TABLE)]
