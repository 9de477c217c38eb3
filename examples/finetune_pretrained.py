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

Low-rank adapters instead of every weight (`--lora`, `--qlora`):

- `--lora`: `add_lora` puts rank-8 adapters beside every kernel of the
  decoder blocks (the attention projections and the MLP: the QLoRA paper's
  advice, all the linear layers) and freezes the rest, so the optimizer
  holds state for the adapters only. After training, `save_lora` writes
  them in PEFT's layout (adapter_config.json, adapter_model.safetensors, in
  OUT-adapter beside the model folder), `merge_lora` folds them into the
  kernels (the merged logits must equal the adapted model's), and the
  merged model is saved, reloaded and compared as in step 4 and 5.
- `--qlora`: the same adapters, trained in float32 over a base that
  `quantize` made int4 (groups of 64 input rows; 32 for `--fast`, whose
  widths are 32 and 64) and frozen. A quantized base has no Hugging Face
  float layout, so what QLoRA delivers is the adapter folder; the export
  then takes the route of a PEFT user: `load_pretrained` the float base
  again, `load_lora` the adapters onto it, `merge_lora`, `save_pretrained`.
  The float model's held-out loss is printed next to the int4 one's: the
  adapters learned to work with the int4 base's rounding, and lose a
  little on the float base (2.889 against 2.874 in a full run).

The plain run also quantizes the fine-tuned model three ways: int8 per
output channel; int4 in groups of 64 (32 for `--fast`, whose widths are 32
and 64) rounded to nearest; and int4 the same size, calibrated: `quantize`
runs the model on 512 training windows and rounds each kernel by GPTQ. For
each it prints how often its top-1 next token agrees with the float model's
on the held-out text, the relative change of the held-out loss, and the
quantized weights' bytes against float32. The targets: int8 agrees on 99%
and moves the loss by at most 1%, int4 95% and 5%. A full run exits
non-zero if one is missed, but the agreement of int4 rounded to nearest,
which is only reported: about 92%, while its loss moves by under 1%. This
model's weights are still mostly their random init, and on a tenth of the
positions its two likeliest bytes are within 0.2 of each other, so plain
4-bit rounding flips those. The calibrated int4 agrees on 95.6% (95.1 to
95.4% with other calibration samples): most of what it still misses is the
embedding table, which no product reads and so is rounded to nearest (about
one point more with it left in float32). `--fast` only reports (its
figures, from 30 steps, say little). Every mode ends with `generate`: a
sample of the saved model, drawn at temperature 0.8 among the 40 likeliest
bytes after `def `.

Run from the repository root:

  uv run examples/finetune_pretrained.py          # the full run (about a minute on 2 cores)
  uv run examples/finetune_pretrained.py --fast   # a tiny model for a few steps (seconds)
  uv run examples/finetune_pretrained.py --lora   # adapters only; --qlora over int4 kernels
  uv run examples/finetune_pretrained.py --model smollm --out smollm-tuned --learning-rate 1e-5

It prints the loss as it falls (`loss A -> B`: the first step vs the mean of
the last ten), the held-out loss before and after, the files written, whether
the reloaded params are identical, the largest difference between
`transformers`' logits and blox's, and a `sample: `; with adapters, the
trainable values and the optimizer's, the adapter files and the merge's
difference; without, the quantization figures. It exits non-zero if the
loss did not fall, the merged model computes other logits than the adapted
one, the reloaded params differ, `transformers` computes other logits or a
full run misses a quantization target it enforces.
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
# A merged kernel computes x (W + s A B) where the adapted model computes
# x W + s (x A) B: the same sum in float32, rounded in another order.
MERGE_TOLERANCE = 1e-4
INTEROP_SYNC = "uv sync --group interop"
# Every kernel of the decoder blocks, as the QLoRA paper advises; not the head.
LORA_TARGETS = r".*/(query|key|value|out|gate|up|down)"
LORA_RANK, LORA_ALPHA = 8, 16
# bits: (least top-1 agreement, largest |relative change of the held-out loss|).
QUANTIZATION_TARGETS = {8: (0.99, 0.01), 4: (0.95, 0.05)}
# Reported against its target but never failed: int4 rounded to nearest
# cannot meet it on this model (the module docstring says why); the
# calibrated int4 is held to it.
REPORTED_ONLY = {("int4", "agreement")}
# GPTQ's calibration: training windows, in batches; a sampler of its own.
CALIBRATION_WINDOWS, CALIBRATION_BATCH, CALIBRATION_SEED = 512, 64, 1
SAMPLE_PROMPT, SAMPLE_TEMPERATURE, SAMPLE_TOP_K = "def ", 0.8, 40


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
  adapter_learning_rate: float  # adapters start at zero and are few: they take larger steps
  group_size: int  # int4's input rows per scale: must divide every kernel's
  sample_tokens: int
  weight_decay: float = 0.1


FULL = Run(
    hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
    sequence_length=64, batch_size=16, steps=250, warmup_steps=25, learning_rate=3e-3,
    adapter_learning_rate=1e-2, group_size=64, sample_tokens=64,
)
FAST = Run(
    hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    sequence_length=32, batch_size=8, steps=30, warmup_steps=5, learning_rate=5e-3,
    adapter_learning_rate=2e-2, group_size=32, sample_tokens=24,
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
  embeddings, norm scales or adapters (`bx.param_mask` from the params' paths)."""
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
  """`(params, opt_state, ids, targets) -> (params, opt_state, loss)`, not jitted.

  Only the trainable params get gradients and updates: all of them in a
  full fine-tune, the adapters alone after `add_lora`."""
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


def values_in(tree: object) -> int:
  """How many numbers the arrays of a pytree (params, optimizer state) hold."""
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


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


def logits_of(model: bm.CausalLM, params: bx.Params, ids: jax.Array) -> npt.NDArray[np.float32]:
  """`model`'s logits for `ids`, on the host."""
  return np.asarray(jax.jit(lambda params, ids: model(params, ids)[0])(params, ids), np.float32)


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
  mine = logits_of(model, params, ids)
  return float(np.max(np.abs(mine - theirs))), float(np.max(np.abs(theirs)))


def stored_bytes_ratio(float_params: bx.Params, quantized: bx.Params) -> float:
  """The quantized weights' bytes (integers and scales) over the same weights' in float32."""
  kernels = [path for path, param in quantized.items()
             if jnp.issubdtype(param.value.dtype, jnp.integer)]
  scales = [(*path[:-1], path[-1] + "_scale") for path in kernels]  # quantize's layout
  stored = sum(int(quantized[path].value.nbytes) for path in (*kernels, *scales))
  return stored / sum(4 * int(float_params[path].value.size) for path in kernels)


def calibration_batches(train_data: npt.NDArray[np.int32], run: Run) -> list[jax.Array]:
  """CALIBRATION_WINDOWS training windows of the run's length, in batches."""
  sampler = np.random.default_rng(CALIBRATION_SEED)
  starts = sampler.integers(0, len(train_data) - run.sequence_length - 1, CALIBRATION_WINDOWS)
  return [windows(train_data, starts[first:first + CALIBRATION_BATCH], run.sequence_length)[0]
          for first in range(0, CALIBRATION_WINDOWS, CALIBRATION_BATCH)]


def quantization_figures(
    model: bm.CausalLM, params: bx.Params, ids: jax.Array, run: Run, *,
    calibration: list[jax.Array], enforce: bool,
) -> list[str]:
  """Prints how int8, int4 and calibrated int4 copies of `params` follow them
  on `ids`; returns the targets missed when `enforce` (the full run), except
  those REPORTED_ONLY."""
  missed = []
  groups = f"in groups of {run.group_size}"
  for name, bits, group_size, batches, how in (
      ("int8", 8, None, None, "per channel"),
      ("int4", 4, run.group_size, None, groups),
      ("int4 calibrated", 4, run.group_size, calibration, f"{groups}, GPTQ on"
       f" {CALIBRATION_WINDOWS} training windows")):
    # quantize gives `model` its hooks in place (and returns it, typed as a
    # Module); it still runs the float params.
    _, quantized = bm.quantize(
        model, params, bits=bits, group_size=group_size, calibration=batches)
    report = bm.quantization_report(model, params, quantized, ids)
    least, largest = QUANTIZATION_TARGETS[bits]
    print(f"quantized {name} {how}: top-1 agreement {100 * report.agreement:.2f}% (target"
          f" {100 * least:.0f}%), held-out loss {report.float_loss:.4f} ->"
          f" {report.quantized_loss:.4f} ({100 * report.loss_change:+.2f}%, target within"
          f" {100 * largest:.0f}%), weights {stored_bytes_ratio(params, quantized):.3f}x their"
          f" float32 bytes")
    below = {"agreement": report.agreement < least, "loss": abs(report.loss_change) > largest}
    for figure in (figure for figure, miss in below.items() if miss and enforce):
      if (name, figure) in REPORTED_ONLY:
        print(f"note: {name}'s {figure} misses its target: reported, not enforced"
              " (the example's docstring says why)")
      else:
        missed.append(f"{name}'s {figure} misses its target")
  return missed


def add_adapters(
    model: bm.CausalLM, params: bx.Params, run: Run, *, quantized: bool
) -> tuple[bm.CausalLM, bx.Params]:
  """`add_lora` beside every kernel of the decoder blocks, over int4 kernels when `quantized`."""
  count = values_in(params)
  model, adapted = bm.add_lora(model, params, targets=LORA_TARGETS, rank=LORA_RANK,
                               alpha=LORA_ALPHA)
  if quantized:
    # add_lora sizes the adapters from the kernels as stored, and int4 packs
    # two outputs per byte: adapters added after quantize come out half as
    # wide as the outputs. So they are made on the float kernels, then set
    # over the quantized base. quantize puts its hooks inside add_lora's.
    _, base = bm.quantize(model, params, bits=4, group_size=run.group_size)
    print(f"quantized: int4 in groups of {run.group_size}, the weights in"
          f" {stored_bytes_ratio(params, base):.3f}x their float32 bytes")
    adapters = {path: param for path, param in adapted.items() if param.trainable}
    adapted = bx.Params({**base.as_dict(), **adapters}, locked=True)
  trainable = adapted.split()[0]
  print(f"adapters: rank {LORA_RANK} on {', '.join(sorted({path[-2] for path in trainable}))};"
        f" trainable {values_in(trainable):,} values ({100 * values_in(trainable) / count:.1f}% of"
        f" the model's {count:,})")
  return model, adapted


def merged_equals_adapted(
    model: bm.CausalLM, params: bx.Params, ids: jax.Array
) -> tuple[bm.CausalLM, bx.Params, bool]:
  """`merge_lora`, and whether the merged model's logits are the adapted one's."""
  adapted = logits_of(model, params, ids)
  model, merged = bm.merge_lora(model, params)
  difference = float(np.max(np.abs(logits_of(model, merged, ids) - adapted)))
  tolerance = MERGE_TOLERANCE * max(1.0, float(np.max(np.abs(adapted))))
  print(f"merged: max |logits difference| {difference:.2e} from the adapted model,"
        f" tolerance {tolerance:.2e}")
  return model, merged, difference <= tolerance


def export_adapters(
    model: bm.CausalLM, params: bx.Params, folder: pathlib.Path, ids: jax.Array,
    targets: jax.Array, *, float_base: pathlib.Path | None, quantized_loss: float,
) -> tuple[bm.CausalLM, bx.Params, bool]:
  """`save_lora` into `folder`, then the merged model and whether it computes
  the adapted model's logits.

  With `float_base` (QLoRA: the base was quantized, and has no float layout
  to save) the saved adapters go onto the float base read again from that
  folder, as a user of PEFT merges a QLoRA adapter, and are merged there;
  the float model's loss on `ids` is printed next to `quantized_loss`.
  """
  written = bm.save_lora(model, params, folder)
  size = sum(path.stat().st_size for path in written)
  print(f"saved adapters: {', '.join(path.name for path in written)} ({size / 1e3:.0f} kB)"
        f" in {folder}")
  if float_base is not None:
    model, params = bm.load_pretrained(float_base, param_dtype=jnp.float32)
    model, params = bm.load_lora(model, params, folder)
    float_loss = float(jax.jit(functools.partial(next_token_loss, model))(params, ids, targets)[0])
    print(f"float base + adapters: held-out loss {float_loss:.3f} ({quantized_loss:.3f} over int4)")
  return merged_equals_adapted(model, params, ids)


def sample(model: bm.CausalLM, params: bx.Params, run: Run) -> str:
  """A continuation of `SAMPLE_PROMPT`, drawn by `generate`, as text."""
  prompt = list(SAMPLE_PROMPT.encode("utf-8"))
  tokens = bm.generate(model, params, jnp.asarray([prompt], jnp.int32),
                       max_new_tokens=run.sample_tokens, temperature=SAMPLE_TEMPERATURE,
                       top_k=SAMPLE_TOP_K, seed=0)
  # A vocabulary larger than the bytes (a --model's) may draw ids past them: shown as '?'.
  drawn = [int(token) if token < BYTES else ord("?") for token in np.asarray(tokens[0])]
  return bytes(prompt + drawn).decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a tiny model for a few steps")
  parser.add_argument("--model", type=pathlib.Path, help="a Hugging Face folder to fine-tune"
                      " (default: a small Llama made here)")
  parser.add_argument("--out", type=pathlib.Path, help="where to save the result"
                      " (default: a temporary folder); adapters go to OUT-adapter")
  parser.add_argument("--steps", type=int, help="training steps (default: the run's)")
  parser.add_argument("--learning-rate", type=float, help="the peak learning rate")
  adapters = parser.add_mutually_exclusive_group()
  adapters.add_argument("--lora", action="store_true", help="train low-rank adapters only")
  adapters.add_argument("--qlora", action="store_true",
                        help="train low-rank adapters over int4-quantized kernels")
  args = parser.parse_args(argv)
  run = FAST if args.fast else FULL
  lora = args.lora or args.qlora
  learning_rate = args.learning_rate or (run.adapter_learning_rate if lora else run.learning_rate)
  run = dataclasses.replace(run, steps=args.steps or run.steps)
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
    if lora and config.family == "gpt2":
      print("ERROR: --lora and --qlora save the adapters in PEFT's layout, which fuses GPT-2's"
            " query, key and value; fine-tune a gpt2 folder without them")
      return 1
    if lora:
      model, params = add_adapters(model, params, run, quantized=args.qlora)

    data = byte_tokens()
    # The last tenth is held out: the loss before and after is measured on it.
    split = len(data) * 9 // 10
    train_data, held_out = data[:split], data[split:]
    print(f"text: {len(data):,} bytes of standard-library source")
    # Every window of the held-out text, side by side: a few hundred rows.
    stride = run.sequence_length + 1
    held_ids, held_targets = windows(
        held_out, np.arange(len(held_out) // stride - 1) * stride, run.sequence_length)
    evaluate = jax.jit(functools.partial(next_token_loss, model))
    before = float(evaluate(params, held_ids, held_targets)[0])

    optimizer = make_optimizer(run, learning_rate)
    # Committed to the device the steps run on: optax makes its step count
    # with jnp.zeros, uncommitted, and the steps return it committed, which
    # jit would otherwise see as a new signature and compile the step twice.
    opt_state = jax.device_put(optimizer.init(params.split()[0]), jax.devices()[0])
    if lora:
      print(f"optimizer state: {values_in(opt_state):,} values (two moments per adapter value)")
    # Donated: the step's outputs reuse the buffers of the params and moments
    # it was given (the frozen base's too: it is not read again below).
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
    if lora:
      model, params, equal = export_adapters(
          model, params, out.with_name(out.name + "-adapter"), held_ids, held_targets,
          float_base=folder if args.qlora else None, quantized_loss=after)
      if not equal:
        failures.append("the merged model computes other logits than the adapted one")

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

    if not lora:
      rows = jnp.concatenate([held_ids, held_targets[:, -1:]], axis=1)
      failures += quantization_figures(
          model, params, rows, run, calibration=calibration_batches(train_data, run),
          enforce=not args.fast)
    print(f"sample: {sample(again, reloaded, run)!r}")

  for failure in failures:
    print(f"ERROR: {failure}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
