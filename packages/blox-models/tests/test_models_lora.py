"""LoRA in blox.models: add_lora, merge_lora, and the PEFT layout (save_lora / load_lora).

The PEFT fixture (fixtures/llama_lora/, made by scripts/make_lora_fixtures.py
with peft from the Llama fixture) is an adapter PEFT wrote and the logits
PEFT computed with it; load_lora must reproduce them without torch.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_fixtures import FIXTURES, fixture_folder
from safetensors.numpy import save_file

import blox.models as bm
from blox.graph import Graph
from blox.models._hooks import add_hook
from blox.models._peft import read_adapter_file
from blox.nn import Conv, Rng
from blox.params import STACKED, Params, value_and_grad

# Compiles many small programs (about a minute on 2 cores): with the
# end-to-end tests, `pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

LLAMA = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
}
LAYER = ("model", "lm", "layers", "layer")
IDS = jnp.array([[1, 5, 7, 2, 9], [3, 3, 4, 8, 1]])


def randomized(params: Params, seed: int = 1) -> Params:
  """`params` with every lora_b drawn at random (B = 0 would hide layout mistakes)."""
  entries = params.as_dict()
  for index, (path, param) in enumerate(entries.items()):
    if path[-1] == "lora_b":
      key = jax.random.fold_in(jax.random.key(seed), index)
      entries[path] = param.replace(value=0.3 * jax.random.normal(key, param.value.shape))
  return Params(entries, locked=True)


_CREATED: dict[int, tuple[bm.CausalLM, Params]] = {}


def fresh(layers: int = 3) -> tuple[bm.CausalLM, Params]:
  """A new Llama model object (hooks live on it) and params made once per size."""
  if layers not in _CREATED:
    _CREATED[layers] = bm.create({**LLAMA, "num_hidden_layers": layers})
  made, params = _CREATED[layers]
  return bm.CausalLM(Graph("model").child("lm"), made.architecture), params


def run(model: Any, params: Params, inputs: jax.Array = IDS) -> jax.Array:
  """The model's output, jitted (faster than running the scan eagerly)."""
  out: jax.Array = jax.jit(lambda params, inputs: model(params, inputs)[0])(params, inputs)
  return out


def adapted(targets: Any = r".*(query|value)") -> tuple[bm.CausalLM, Params, Params]:
  model, base = fresh()
  model, params = bm.add_lora(model, base, targets=targets, rank=4, alpha=8)
  return model, base, params


def test_zero_b_computes_the_base_model_exactly() -> None:
  model, base = fresh()
  expected = run(model, base)
  model, params = bm.add_lora(model, base, targets=r".*", rank=2, alpha=4)
  got = run(model, params)
  assert bool((got == expected).all())
  assert bool(jnp.abs(params[(*LAYER, "mlp", "up", "lora_a")].value).max() > 0)


def test_adapters_are_stacked_beside_their_kernels() -> None:
  _, base, params = adapted()
  new = sorted(set(params) - set(base))
  assert new == sorted((*LAYER, "attention", name, which)
                       for name in ("query", "value") for which in ("lora_a", "lora_b"))
  assert params[(*LAYER, "attention", "query", "lora_a")].value.shape == (3, 16, 4)
  assert params[(*LAYER, "attention", "query", "lora_b")].value.shape == (3, 4, 4, 4)
  assert params[(*LAYER, "attention", "value", "lora_b")].value.shape == (3, 4, 2, 4)
  b = params[(*LAYER, "attention", "value", "lora_b")]
  assert b.metadata[STACKED] == (3,) and b.trainable and not bool(b.value.any())
  assert b.sharding == (None, "kv_heads", "head_dim")
  # The output projection contracts two axes: A [heads, head_dim, r], B [r, embed].
  _, _, both = adapted(targets=["out"])
  assert both[(*LAYER, "attention", "out", "lora_a")].value.shape == (3, 4, 4, 4)
  assert both[(*LAYER, "attention", "out", "lora_b")].value.shape == (3, 4, 16)


def sgd(model: Any, params: Params, steps: int = 3) -> tuple[Params, list[float], Params]:
  """`steps` steps of plain SGD on the trainable params (blox-models' own
  tests do without optax): the params, the losses, the first step's grads."""

  def loss(params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    logits, params = model(params, ids)
    log_probs = jax.nn.log_softmax(logits[:, :-1])
    picked = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)
    return -picked.mean(), params

  step_grads = value_and_grad(loss)

  @jax.jit
  def step(params: Params) -> tuple[Params, jax.Array, Params]:
    value, params, grads = step_grads(params, IDS)
    trainable, rest = params.split()
    moved = jax.tree.map(lambda w, g: w - 0.5 * g, trainable, grads)
    return moved.merge(rest), value, grads

  losses, first = [], None
  for _ in range(steps):
    params, value, grads = step(params)
    losses.append(float(value))
    first = grads if first is None else first
  assert first is not None
  return params, losses, first


def test_only_adapters_are_trainable_and_get_gradients() -> None:
  model, base, params = adapted(targets=r".*(query|value)|.*mlp/down")
  trainable, rest = params.split()
  assert all(path[-1] in ("lora_a", "lora_b") for path in trainable)
  assert len(trainable) == 6 and set(rest) == set(base)
  start = params
  params, losses, grads = sgd(model, params)
  assert set(grads) == set(trainable)
  assert float(jnp.abs(grads[(*LAYER, "mlp", "down", "lora_b")].value).max()) > 0
  assert losses[-1] < losses[0]
  for path in base:
    assert bool((params[path].value == start[path].value).all()), path
  assert not bool((params[(*LAYER, "attention", "query", "lora_b")].value == 0).all())


def test_qlora_over_int4_kernels() -> None:
  model, base = fresh()
  _, quantized = bm.quantize(model, base, bits=4, group_size=16)  # hooks `model` in place
  expected = run(model, quantized)
  model, params = bm.add_lora(model, quantized, targets=r".*(query|value)", rank=4, alpha=8)
  # B starts at zero: the adapted model computes the quantized one exactly.
  assert bool((run(model, params) == expected).all())
  # The adapters have the float kernel's shape, not the packed one's (4 -> 2).
  query = (*LAYER, "attention", "query")
  assert params[(*query, "kernel")].value.shape == (3, 16, 4, 2)
  assert params[(*query, "lora_b")].value.shape == (3, 4, 4, 4)
  assert params[(*query, "lora_a")].value.dtype == jnp.float32
  trainable, rest = params.split()
  assert sorted(path[-2:] for path in trainable) == sorted(
      (name, which) for name in ("query", "value") for which in ("lora_a", "lora_b"))
  assert set(rest) == set(quantized)
  params, losses, grads = sgd(model, params)
  assert set(grads) == set(trainable)
  assert float(jnp.abs(grads[(*LAYER, "attention", "value", "lora_b")].value).max()) > 0
  assert losses[-1] < losses[0], losses
  for path, param in quantized.items():  # integers and scales untouched
    assert params[path].value.dtype == param.value.dtype, path
    assert bool((params[path].value == param.value).all()), path
  assert not bool((params[(*query, "lora_b")].value == 0).all())


def test_merge_equals_the_adapted_model_and_restores_the_base(tmp_path: pathlib.Path) -> None:
  model, base, params = adapted(targets=r".*(query|out)|.*mlp/(gate|down)|.*head")
  params = randomized(params)
  expected = run(model, params)
  model, merged = bm.merge_lora(model, params)
  assert list(merged) == list(base)
  assert all(merged[path].trainable == base[path].trainable for path in base)
  assert all("frozen_by_lora" not in param.metadata for param in merged.values())
  got = run(model, merged)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
  assert not bool((got == run(model, base)).all())
  bm.save_pretrained(model, merged, tmp_path)
  _, loaded = bm.load_pretrained(tmp_path)
  np.testing.assert_array_equal(np.asarray(loaded[(*LAYER, "attention", "out", "kernel")].value),
                                np.asarray(merged[(*LAYER, "attention", "out", "kernel")].value))
  # The hooks are gone: the model can take adapters again.
  bm.add_lora(model, merged, targets=["up"], rank=2, alpha=2)


def test_conv_and_a_hook_below_compose() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  conv = Conv(graph.child("conv"), 5, (3, 3), rng=rng, strides=2)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  base_out, base = conv(rng.seed(Params(), seed=0), x)
  conv, params = bm.add_lora(conv, base.locked(), targets="net/conv", rank=2, alpha=2)
  assert params[("net", "conv", "lora_a")].value.shape == (3, 3, 3, 2)
  assert params[("net", "conv", "lora_b")].value.shape == (2, 5)
  params = randomized(params)
  expected, _ = conv(params, x)
  _, merged = bm.merge_lora(conv, params)
  np.testing.assert_allclose(np.asarray(conv(merged, x)[0]), np.asarray(expected), atol=1e-5)
  # Quantization's place (order 10, below LoRA): the adapter adds to what it computes.
  conv, params = bm.add_lora(conv, base.locked(), targets="net/conv", rank=2, alpha=2)
  params = randomized(params)
  with_lora, _ = conv(params, x)
  add_hook(conv, lambda c, inputs, w: c.compute(inputs, w) * 0.0, order=10)
  only_lora, _ = conv(params, x)
  np.testing.assert_allclose(np.asarray(with_lora - only_lora), np.asarray(base_out), atol=1e-5)
  assert float(jnp.abs(only_lora).max()) > 0


def test_save_and_load_round_trip_bit_identical(tmp_path: pathlib.Path) -> None:
  model, _, params = adapted(targets=r".*(query|key|value|out)|.*mlp/.*")
  params = randomized(params)
  written = bm.save_lora(model, params, tmp_path, base_model_name_or_path="tiny-llama")
  assert [path.name for path in written] == ["adapter_model.safetensors", "adapter_config.json"]
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert (config["peft_type"], config["r"], config["lora_alpha"], config["task_type"]) == (
      "LORA", 4, 8, "CAUSAL_LM")
  assert config["target_modules"] == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
  tensors = read_adapter_file(tmp_path / "adapter_model.safetensors")
  assert tensors["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"].shape == (4, 16)
  assert tensors["base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"].shape == (8, 4)
  assert tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (4, 16)
  other, base = fresh()
  other, loaded = bm.load_lora(other, base, tmp_path)
  assert list(loaded) == list(params)
  for path in params:
    assert loaded[path].trainable == params[path].trainable
    np.testing.assert_array_equal(np.asarray(loaded[path].value), np.asarray(params[path].value))
  np.testing.assert_array_equal(np.asarray(run(other, loaded)), np.asarray(run(model, params)))


def test_load_lora_reproduces_peft() -> None:
  model, params = bm.load_pretrained(fixture_folder("llama"))
  model, params = bm.load_lora(model, params, FIXTURES / "llama_lora")
  assert params[(*LAYER, "mlp", "down", "lora_a")].value.shape[-1] == 4
  with np.load(FIXTURES / "llama_lora" / "reference.npz") as data:
    ids, mask, expected = data["input_ids"], data["attention_mask"], data["logits"]
  logits = jax.jit(lambda params: model(params, jnp.asarray(ids), mask=jnp.asarray(mask))[0])(params)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-4)


def test_blox_adapters_run_in_peft() -> None:
  pytest.importorskip("peft", reason="needs torch, transformers and peft (the interop venv)")
  from scripts.make_lora_fixtures import check_blox_save
  assert check_blox_save() < 1e-4


def test_errors(tmp_path: pathlib.Path) -> None:
  model, base, params = adapted()
  with pytest.raises(ValueError, match="already has LoRA adapters.*merge_lora"):
    bm.add_lora(model, params, targets=".*", rank=2, alpha=2)
  with pytest.raises(ValueError, match=r"is not in the params.*pass the params add_lora"):
    model(base, IDS)
  plain, base = fresh()
  with pytest.raises(ValueError, match=r"matches no kernel.*'model/lm/layers/layer/attention/query'"):
    bm.add_lora(plain, base, targets="q_proj", rank=2, alpha=2)
  with pytest.raises(ValueError, match="rank must be a positive int"):
    bm.add_lora(plain, base, targets=".*", rank=0, alpha=2)
  with pytest.raises(ValueError, match="no LoRA adapters"):
    bm.merge_lora(plain, base)
  with pytest.raises(ValueError, match="no LoRA adapters in the params"):
    bm.save_lora(plain, base, tmp_path)
  gpt2, gpt2_params = bm.create({"model_type": "gpt2", "vocab_size": 16, "n_embd": 8, "n_head": 2,
                                 "n_layer": 1, "n_positions": 16})
  gpt2, gpt2_params = bm.add_lora(gpt2, gpt2_params, targets=["query"], rank=2, alpha=2)
  with pytest.raises(ValueError, match="fused c_attn"):
    bm.save_lora(gpt2, gpt2_params, tmp_path)
  bm.save_lora(model, params, tmp_path)
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
  with pytest.raises(ValueError, match="not a plain LoRA adapter"):
    bm.load_lora(plain, base, tmp_path)
  (tmp_path / "adapter_config.json").write_text(json.dumps(config))
  other, other_base = bm.create({**LLAMA, "hidden_size": 8})
  with pytest.raises(ValueError, match=r"q_proj.lora_A.weight' is \[4, 16\], but .* needs \[4, 8\]"):
    bm.load_lora(other, other_base, tmp_path)
  tensors = read_adapter_file(tmp_path / "adapter_model.safetensors")
  save_file({name.replace("q_proj", "x_proj"): array for name, array in tensors.items()},
            str(tmp_path / "adapter_model.safetensors"))
  with pytest.raises(ValueError, match="x_proj.lora_A.weight', which adapts no kernel"):
    bm.load_lora(plain, base, tmp_path)
