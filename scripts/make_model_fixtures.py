"""Hugging Face reference fixtures for blox-models: tiny random checkpoints and their outputs.

blox-models loads Hugging Face causal-LM checkpoints (config.json and
safetensors) and must compute what `transformers` computes. CI has no torch,
so this script, run by hand in an environment that has torch and
transformers, writes for each family in `FAMILIES` a tiny random model and
what `transformers` makes of it into
`packages/blox-models/tests/fixtures/<family>/`:

- the model folder exactly as `save_pretrained(safe_serialization=True)` writes
  it (config.json, safetensors, generation_config.json); `llama` is sharded
  (`model.safetensors.index.json`), so that the loader's shard path is covered;
- `reference.npz`: `input_ids` and `attention_mask` int32 [2, 16] (row 1 is
  right-padded after 11 tokens, with the pad id 0), `logits` float32
  [2, 16, vocab] of one forward pass with that mask, `prompt_ids` int32 [2, 8],
  `greedy_tokens` int32 [2, 16] (the 16 new tokens of greedy `generate`, with
  no end-of-sequence stop) and `transformers_version`.

Every weight is re-drawn with a large spread (norm scales and biases too), so
that each feature of a family (rope scaling, sliding windows, soft-capping,
q/k norms, biases, ...) moves the logits well beyond float32 noise.

Usage (never in CI; torch and transformers are imported only when it runs):
  python scripts/make_model_fixtures.py [--out DIR] [--family NAME ...]
  python scripts/make_model_fixtures.py --check   # recompute, compare

`--check` recomputes every reference from its committed folder and fails
unless it equals the committed `reference.npz` (logits may differ by up to
`CHECK_LOGITS_ATOL`, for a CPU that rounds float32 sums differently). `transformers_outputs`
computes the same outputs for any folder, e.g. one that blox wrote.

The inputs depend on numpy alone:
  >>> ids, mask, prompts = make_inputs(256)
  >>> ids.shape, mask.shape, prompts.shape
  ((2, 16), (2, 16), (2, 8))
  >>> int(mask[1].sum()), int(ids[1, 11:].max()), int(prompts.min()) > 0
  (11, 0, True)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
  "FAMILIES",
  "build_model",
  "make_inputs",
  "transformers_outputs",
  "write_family",
  "check_family",
  "main",
]

FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2")

DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "packages/blox-models/tests/fixtures"

# Shared sizes: small enough to commit, large enough for GQA and per-head norms.
VOCAB = 128
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 8
INTERMEDIATE = 64
MAX_POSITIONS = 128
PAD_ID = 0

BATCH = 2
SEQ_LEN = 16
PADDED_ROW_LENGTH = 11
PROMPT_LEN = 8
NEW_TOKENS = 16

TORCH_SEED = 0
INPUT_SEED = 1234
# Spreads of the re-drawn weights: matrices and embeddings, biases, and the
# noise added to norm scales (around 1, or around 0 where a norm scales by
# 1 + weight as Gemma's do). Large enough that every feature shows in the logits.
WEIGHT_STD = 0.15
BIAS_STD = 0.1
NORM_STD = 0.2
# `--check` on another CPU may round float32 sums differently: logits within
# this of the committed ones pass (with a note); tokens must match exactly.
CHECK_LOGITS_ATOL = 1e-5
# A folder of about 110 kB cut at this size gives three shards.
LLAMA_SHARD_BYTES = 50_000


def _config(family: str) -> Any:
  """The `transformers` config of one family, written out in full."""
  import transformers

  shared: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "max_position_embeddings": MAX_POSITIONS,
    "pad_token_id": PAD_ID,
    "attn_implementation": "eager",
  }
  if family == "llama":
    # A small original length, so that llama3's frequency scaling bites on
    # 16-token inputs: wavelengths above 32 are divided by the factor and
    # those between 8 and 32 are smoothed.
    rope = {
      "rope_type": "llama3",
      "rope_theta": 10000.0,
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32,
    }
    return transformers.LlamaConfig(
      **shared, num_hidden_layers=2, rope_parameters=rope, tie_word_embeddings=False
    )
  if family == "mistral":
    return transformers.MistralConfig(
      **shared,
      num_hidden_layers=2,
      sliding_window=6,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      tie_word_embeddings=False,
    )
  if family == "qwen2":
    # Qwen2's sliding window stays off (use_sliding_window=False, its default).
    qwen2_shared = {k: v for k, v in shared.items() if k != "head_dim"}
    return transformers.Qwen2Config(
      **qwen2_shared,
      num_hidden_layers=2,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
      tie_word_embeddings=True,
    )
  if family == "qwen3":
    # head_dim 16 while hidden / heads is 8: the projections are not square.
    return transformers.Qwen3Config(
      **{**shared, "head_dim": 16},
      num_hidden_layers=2,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
      tie_word_embeddings=False,
    )
  if family == "gemma2":
    # Caps small enough to bite: attention scores here have a spread near 1,
    # logits near 1.1 (real Gemma 2 uses 50 and 30).
    return transformers.Gemma2Config(
      **shared,
      num_hidden_layers=3,
      sliding_window=6,
      attn_logit_softcapping=2.0,
      final_logit_softcapping=3.0,
      query_pre_attn_scalar=24,
      hidden_activation="gelu_pytorch_tanh",
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      tie_word_embeddings=True,
    )
  if family == "gemma3":
    # Local layers rotate with base 1e4, global ones with 1e6 and linear
    # scaling 8 (transformers 5 keys rope parameters by layer type). No
    # soft-capping: Gemma 3 has none, and transformers' Gemma 3 attention
    # ignores attn_logit_softcapping.
    rope = {
      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
      "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    return transformers.Gemma3TextConfig(
      **shared,
      num_hidden_layers=3,
      layer_types=["sliding_attention", "sliding_attention", "full_attention"],
      sliding_window=6,
      query_pre_attn_scalar=24,
      hidden_activation="gelu_pytorch_tanh",
      rope_parameters=rope,
      tie_word_embeddings=True,
    )
  if family == "gpt2":
    # GPT-2's default special ids (50256) lie outside this vocabulary: the
    # last id plays their part, as 50256 is GPT-2's last id.
    return transformers.GPT2Config(
      vocab_size=VOCAB,
      n_embd=HIDDEN,
      n_head=HEADS,
      n_layer=2,
      n_inner=INTERMEDIATE,
      n_positions=MAX_POSITIONS,
      bos_token_id=VOCAB - 1,
      eos_token_id=VOCAB - 1,
      attn_implementation="eager",
      tie_word_embeddings=True,
    )
  raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_model(family: str) -> Any:
  """A float32 model of `family` with every parameter re-drawn from a fixed seed."""
  import torch
  import transformers

  torch.manual_seed(TORCH_SEED)
  model = transformers.AutoModelForCausalLM.from_config(_config(family), dtype=torch.float32)
  generator = torch.Generator().manual_seed(TORCH_SEED)
  with torch.no_grad():
    # named_parameters lists a tied head once, under the embedding's name.
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
      if name.endswith(".bias"):
        param.copy_(BIAS_STD * noise)
      elif param.ndim == 1:
        # A norm scale: jitter it around its identity value (1, or 0 for
        # Gemma's 1 + weight), which the default init just set.
        param.add_(NORM_STD * noise)
      else:
        param.copy_(WEIGHT_STD * noise)
  return model.eval()


def make_inputs(
  vocab: int, seed: int = INPUT_SEED
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
  """The test inputs: token ids, their attention mask, and two unpadded prompts.

  Tokens are drawn from 1..vocab-1, so the pad id 0 only appears where row 1
  is padded (its last `SEQ_LEN - PADDED_ROW_LENGTH` positions).
  """
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(1, vocab, size=(BATCH, SEQ_LEN)).astype(np.int32)
  attention_mask = np.ones((BATCH, SEQ_LEN), dtype=np.int32)
  attention_mask[1, PADDED_ROW_LENGTH:] = 0
  input_ids[1, PADDED_ROW_LENGTH:] = PAD_ID
  prompt_ids = rng.integers(1, vocab, size=(BATCH, PROMPT_LEN)).astype(np.int32)
  return input_ids, attention_mask, prompt_ids


def _logits(model: Any, input_ids: Any, attention_mask: Any) -> npt.NDArray[np.float32]:
  import torch

  with torch.no_grad():
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
  return np.asarray(out.logits.numpy(), dtype=np.float32)


def _greedy_without_cache(model: Any, prompt_ids: Any) -> npt.NDArray[np.int32]:
  """Greedy decoding by whole forward passes: what `generate` must reproduce."""
  import torch

  ids = prompt_ids
  for _ in range(NEW_TOKENS):
    with torch.no_grad():
      logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
  return np.asarray(ids[:, prompt_ids.shape[1] :].numpy(), dtype=np.int32)


def transformers_outputs(
  folder: pathlib.Path | str,
  input_ids: npt.NDArray[np.integer[Any]],
  attention_mask: npt.NDArray[np.integer[Any]],
  prompt_ids: npt.NDArray[np.integer[Any]],
) -> dict[str, npt.NDArray[Any]]:
  """What `transformers` computes for the Hugging Face model in `folder`.

  Loads the folder in float32 with eager attention and returns `logits`
  (float32 [batch, seq, vocab], one forward pass with `attention_mask`) and
  `greedy_tokens` (int32 [batch, 16]: the new tokens of greedy `generate` on
  the unpadded `prompt_ids`, never stopped by an end-of-sequence id).
  """
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(
    str(folder), dtype=torch.float32, attn_implementation="eager"
  ).eval()
  ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
  mask = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))
  prompts = torch.from_numpy(np.asarray(prompt_ids, dtype=np.int64))
  with torch.no_grad():
    # eos_token_id=None: the config's end-of-sequence id neither stops
    # generation nor, through min_new_tokens, masks that id's logit.
    generated = model.generate(
      prompts,
      attention_mask=torch.ones_like(prompts),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      min_new_tokens=NEW_TOKENS,
      eos_token_id=None,
      pad_token_id=PAD_ID,
    )
  greedy = np.asarray(generated[:, prompts.shape[1] :].numpy(), dtype=np.int32)
  # The cached decoding (sliding-window caches included) must agree with
  # plain argmax over whole forward passes, or the reference is not greedy.
  uncached = _greedy_without_cache(model, prompts)
  if not np.array_equal(greedy, uncached):
    raise AssertionError(f"{folder}: generate {greedy.tolist()} != argmax loop {uncached.tolist()}")
  return {"logits": _logits(model, ids, mask), "greedy_tokens": greedy}


def _reference(folder: pathlib.Path) -> dict[str, npt.NDArray[Any]]:
  import transformers

  config = transformers.AutoConfig.from_pretrained(str(folder))
  input_ids, attention_mask, prompt_ids = make_inputs(config.vocab_size)
  outputs = transformers_outputs(folder, input_ids, attention_mask, prompt_ids)
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "logits": outputs["logits"],
    "prompt_ids": prompt_ids,
    "greedy_tokens": outputs["greedy_tokens"],
    "transformers_version": np.array(transformers.__version__),
  }


def write_family(family: str, out: pathlib.Path) -> pathlib.Path:
  """Writes `family`'s model folder and `reference.npz` under `out/family`."""
  import torch

  folder = out / family
  folder.mkdir(parents=True, exist_ok=True)
  for old in [*folder.glob("*.safetensors"), *folder.glob("*.json"), *folder.glob("*.npz")]:
    old.unlink()
  model = build_model(family)
  shard = LLAMA_SHARD_BYTES if family == "llama" else "50GB"
  model.save_pretrained(str(folder), safe_serialization=True, max_shard_size=shard)
  reference = _reference(folder)
  # The reloaded folder must compute what the model in memory computes.
  ids = torch.from_numpy(reference["input_ids"].astype(np.int64))
  mask = torch.from_numpy(reference["attention_mask"].astype(np.int64))
  in_memory = _logits(model, ids, mask)
  if not np.array_equal(in_memory, reference["logits"]):
    raise AssertionError(f"{family}: logits changed through save_pretrained and reload")
  np.savez_compressed(
    folder / "reference.npz",
    input_ids=reference["input_ids"],
    attention_mask=reference["attention_mask"],
    logits=reference["logits"],
    prompt_ids=reference["prompt_ids"],
    greedy_tokens=reference["greedy_tokens"],
    transformers_version=reference["transformers_version"],
  )
  return folder


def check_family(family: str, root: pathlib.Path) -> list[str]:
  """Recomputes `family`'s reference from its committed folder; returns mismatches."""
  folder = root / family
  with np.load(folder / "reference.npz") as data:
    committed = {key: data[key] for key in data.files}
  fresh = _reference(folder)
  problems = []
  for key, value in fresh.items():
    if key == "transformers_version" or np.array_equal(value, committed[key]):
      continue
    diff = float(np.max(np.abs(value.astype(np.float64) - committed[key].astype(np.float64))))
    if key == "logits" and diff <= CHECK_LOGITS_ATOL:
      print(f"{family}: logits equal to within {diff:.3g}, not bit for bit")
    else:
      problems.append(f"{family}: {key} differs (max abs difference {diff:.3g})")
  if str(committed["transformers_version"]) != str(fresh["transformers_version"]):
    print(f"{family}: made with transformers {committed['transformers_version']}, "
          f"checked with {fresh['transformers_version']}")
  return problems


def main(argv: Sequence[str] | None = None) -> int:
  """Writes (or with --check, verifies) the fixtures; returns the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="fixtures folder")
  parser.add_argument("--family", action="append", choices=FAMILIES, help="only these families")
  parser.add_argument("--check", action="store_true", help="recompute and compare, write nothing")
  args = parser.parse_args(argv)
  families: list[str] = args.family or list(FAMILIES)
  if args.check:
    problems = [p for family in families for p in check_family(family, args.out)]
    for problem in problems:
      print(problem, file=sys.stderr)
    print(f"checked {len(families)} families: {'FAILED' if problems else 'all equal'}")
    return 1 if problems else 0
  for family in families:
    folder = write_family(family, args.out)
    size = sum(path.stat().st_size for path in folder.iterdir())
    print(f"{family}: wrote {folder} ({size / 1000:.0f} kB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
