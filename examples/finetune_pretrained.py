"""Fine-tune a pretrained Hugging Face causal LM with blox, and hand it back to `transformers`.

The whole round trip of `blox.models`:

1. a checkpoint: nothing can be downloaded here, so the example makes a
   small Llama-family one itself (`blox.models.create` at random, then
   `save_pretrained`: a Hugging Face folder with config.json and
   model.safetensors). `--model FOLDER` uses a folder you downloaded instead
   (e.g. `huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir
   smollm`), of any supported family;
2. `load_pretrained(folder, param_dtype=float32)`: the model and its params
   (a bfloat16 checkpoint is cast to float32, which the optimizer updates);
3. fine-tuning: next-token cross-entropy on byte-level tokens (the UTF-8
   bytes of a few standard-library modules' source, so the text is the same
   for a given Python; token ids 0..255, which any vocabulary of 256 or more
   holds), AdamW with weight decay on the kernels only, gradient clipping
   and a warmup-cosine learning rate, in one jitted step around
   `bx.value_and_grad`. A real model reads its own tokenizer's ids: swap
   `byte_tokens` for `transformers.AutoTokenizer` to fine-tune it for real;
4. `save_pretrained` into an output folder, `load_pretrained` again, and a
   check that every param came back bit for bit;
5. when `transformers` is installed (`uv sync --group interop`), the saved
   folder loaded by `transformers.AutoModelForCausalLM.from_pretrained` and
   its logits compared with blox's.

Run from the repository root:

  uv run examples/finetune_pretrained.py          # the full run (about a minute on 2 cores)
  uv run examples/finetune_pretrained.py --fast   # a tiny model for a few steps (seconds)
  uv run examples/finetune_pretrained.py --model smollm --out smollm-tuned --learning-rate 1e-5

It prints the loss as it falls (`loss A -> B`: the first step vs the mean of
the last ten), the held-out loss before and after, the files written, whether
the reloaded params are identical, and the largest difference between
`transformers`' logits and blox's. It exits non-zero if the loss did not fall,
the reloaded params differ or `transformers` computes other logits.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import inspect
import pathlib
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax

import blox as bx
import blox.models as bm

__all__ = ["FAST", "FULL", "byte_tokens", "compare_with_transformers", "main", "make_checkpoint"]

BYTES = 256
# transformers and blox sum in float32 in different orders: logits agree to
# a few units in the last place of the largest one.
RELATIVE_TOLERANCE = 1e-5
INTEROP_SYNC = "uv sync --group interop"


@dataclasses.dataclass(frozen=True)
class Run:
  """The made checkpoint's sizes and the fine-tuning run's."""

  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  sequence_length: int
  batch_size: int
  steps: int
  warmup_steps: int
  learning_rate: float
  weight_decay: float = 0.1


FULL = Run(
    hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
    sequence_length=64, batch_size=16, steps=250, warmup_steps=25, learning_rate=3e-3,
)
FAST = Run(
    hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    sequence_length=32, batch_size=8, steps=30, warmup_steps=5, learning_rate=5e-3,
)

TrainStep = Callable[
    [bx.Params, optax.OptState, jax.Array, jax.Array],
    tuple[bx.Params, optax.OptState, jax.Array],
]


def byte_tokens() -> npt.NDArray[np.int32]:
  """The UTF-8 bytes of a few standard-library modules' source, as token ids 0..255."""
  text = "".join(inspect.getsource(module) for module in (functools, textwrap, dataclasses))
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def make_checkpoint(folder: pathlib.Path, run: Run) -> list[pathlib.Path]:
  """A random Llama-family model of `run`'s sizes saved as a Hugging Face folder.

  It stands in for a downloaded checkpoint: the config is a Llama config.json
  as `transformers` writes it, for a vocabulary of bytes.
  """
  config = {
      "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": BYTES,
      "hidden_size": run.hidden_size, "intermediate_size": run.intermediate_size,
      "num_hidden_layers": run.num_layers, "num_attention_heads": run.num_heads,
      "num_key_value_heads": run.num_kv_heads, "max_position_embeddings": 2048,
      "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
  }
  model, params = bm.create(config, seed=0)
  return bm.save_pretrained(model, params, folder)


def make_optimizer(run: Run, learning_rate: float) -> optax.GradientTransformation:
  """AdamW after gradient clipping; weight decay on the kernels only, not on
  embeddings or norm scales (`bx.param_mask` from the params' paths)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=run.warmup_steps,
      decay_steps=run.steps, end_value=learning_rate / 10,
  )
  kernels = lambda params: bx.param_mask(params, lambda path, _: path[-1] == "kernel")  # noqa: E731
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b2=0.95, weight_decay=run.weight_decay, mask=kernels),
  )


def next_token_loss(
    model: bm.CausalLM, params: bx.Params, ids: jax.Array, targets: jax.Array
) -> tuple[jax.Array, bx.Params]:
  """Mean cross-entropy of every position's logits against the next token."""
  logits, params = model(params, ids)
  return bx.softmax_cross_entropy(logits, targets).mean(), params


def make_train_step(model: bm.CausalLM, optimizer: optax.GradientTransformation) -> TrainStep:
  """`(params, opt_state, ids, targets) -> (params, opt_state, loss)`, not jitted."""
  loss_fn = functools.partial(next_token_loss, model)

  def train_step(
      params: bx.Params, opt_state: optax.OptState, ids: jax.Array, targets: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, ids, targets)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  return train_step


def windows(
    data: npt.NDArray[np.int32], starts: npt.NDArray[np.int64], length: int
) -> tuple[jax.Array, jax.Array]:
  """`(ids, targets)` `[len(starts), length]`: each window and the same shifted by one."""
  rows = np.stack([data[s : s + length + 1] for s in starts])
  return jnp.asarray(rows[:, :-1]), jnp.asarray(rows[:, 1:])


def same_params(a: bx.Params, b: bx.Params) -> bool:
  """Whether `a` and `b` hold the same paths, dtypes, metadata and bytes."""
  if list(a) != list(b):
    return False
  return all(
      a[path].value.dtype == b[path].value.dtype
      and a[path].metadata == b[path].metadata
      and np.asarray(a[path].value).tobytes() == np.asarray(b[path].value).tobytes()
      for path in a
  )


def compare_with_transformers(
    folder: pathlib.Path, model: bm.CausalLM, params: bx.Params, ids: jax.Array
) -> tuple[float, float] | None:
  """`(max |difference|, max |logit|)` between `transformers`' logits for the
  folder and blox's for `model`, or None when transformers is not installed."""
  if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
    return None
  import torch  # the interop group: typed as Any for mypy
  import transformers

  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(folder), dtype=torch.float32, attn_implementation="eager").eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).logits.numpy()
  mine = np.asarray(jax.jit(model)(params, ids)[0], np.float32)
  return float(np.max(np.abs(mine - theirs))), float(np.max(np.abs(theirs)))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a tiny model for a few steps")
  parser.add_argument("--model", type=pathlib.Path, help="a Hugging Face folder to fine-tune"
                      " (default: a small Llama made here)")
  parser.add_argument("--out", type=pathlib.Path, help="where to save the result"
                      " (default: a temporary folder)")
  parser.add_argument("--steps", type=int, help="training steps (default: the run's)")
  parser.add_argument("--learning-rate", type=float, help="the peak learning rate")
  args = parser.parse_args(argv)
  run = FAST if args.fast else FULL
  run = dataclasses.replace(run, steps=args.steps or run.steps,
                            learning_rate=args.learning_rate or run.learning_rate)
  failures: list[str] = []

  with tempfile.TemporaryDirectory() as scratch:
    folder = args.model
    if folder is None:
      folder = pathlib.Path(scratch, "pretrained")
      written = make_checkpoint(folder, run)
      print(f"checkpoint: a random Llama made with create + save_pretrained:"
            f" {', '.join(path.name for path in written)}")

    start = time.perf_counter()
    model, params = bm.load_pretrained(folder, param_dtype=jnp.float32)
    config = model.architecture
    count = sum(int(np.prod(param.value.shape)) for param in params.values())
    layers = f"{config.num_layers} layer{'s' if config.num_layers > 1 else ''}"
    print(f"loaded: {config.family}, {layers} of width {config.hidden_size},"
          f" {config.num_heads} query / {config.num_kv_heads} key-value heads, vocab"
          f" {config.vocab_size}; {count:,} values in {time.perf_counter() - start:.2f} s")
    if config.vocab_size < BYTES:
      print(f"ERROR: the vocabulary ({config.vocab_size}) cannot hold the {BYTES} byte ids")
      return 1

    data = byte_tokens()
    # The last tenth is held out: the loss before and after is measured on it.
    split = len(data) * 9 // 10
    train_data, held_out = data[:split], data[split:]
    print(f"text: {len(data):,} bytes of standard-library source")
    last_start = len(held_out) - run.sequence_length - 1
    held_ids, held_targets = windows(
        held_out, np.linspace(0, last_start, run.batch_size).astype(np.int64), run.sequence_length)
    evaluate = jax.jit(functools.partial(next_token_loss, model))
    before = float(evaluate(params, held_ids, held_targets)[0])

    optimizer = make_optimizer(run, run.learning_rate)
    opt_state = optimizer.init(params.split()[0])
    # Donated: the step's outputs reuse the buffers of the params and moments it was given.
    train_step = jax.jit(make_train_step(model, optimizer), donate_argnums=(0, 1))
    sampler = np.random.default_rng(0)
    losses: list[float] = []
    report_every = max(1, run.steps // 6)
    start = time.perf_counter()
    for step in range(1, run.steps + 1):
      starts = sampler.integers(0, len(train_data) - run.sequence_length - 1, run.batch_size)
      ids, targets = windows(train_data, starts, run.sequence_length)
      params, opt_state, loss = train_step(params, opt_state, ids, targets)
      losses.append(float(loss))
      if step == 1 or step % report_every == 0:
        print(f"  step {step:4d}  loss {losses[-1]:.4f}")
    first, last = losses[0], float(np.mean(losses[-10:]))
    print(f"loss {first:.3f} -> {last:.3f} in {time.perf_counter() - start:.1f} s")
    after = float(evaluate(params, held_ids, held_targets)[0])
    print(f"held-out loss {before:.3f} -> {after:.3f}")
    if not (last < first and after < before):
      failures.append("the loss did not fall")

    out = args.out or pathlib.Path(scratch, "finetuned")
    written = bm.save_pretrained(model, params, out)
    size = sum(path.stat().st_size for path in written)
    print(f"saved: {', '.join(path.name for path in written)} ({size / 1e6:.1f} MB) in {out}")
    again, reloaded = bm.load_pretrained(out)
    identical = again.architecture == config and same_params(params, reloaded)
    print(f"reloaded: {len(reloaded)} params, bit-identical: {identical}")
    if not identical:
      failures.append("the reloaded params differ")

    compared = compare_with_transformers(out, again, reloaded, held_ids[:2])
    if compared is None:
      print(f"transformers: not installed, comparison skipped ({INTEROP_SYNC} installs it)")
    else:
      difference, largest = compared
      tolerance = RELATIVE_TOLERANCE * max(1.0, largest)
      print(f"transformers: max |logits difference| {difference:.2e}, tolerance {tolerance:.2e}")
      if not difference <= tolerance:
        failures.append("transformers computes other logits")

  for failure in failures:
    print(f"ERROR: {failure}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
