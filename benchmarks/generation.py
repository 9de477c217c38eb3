"""Generation benchmark: `blox.models.generate` against a hand-written JAX decoder and `transformers`.

The model is a random Llama made with `blox.models.create` (4 layers, hidden
256, 4 query / 2 key-value heads, MLP 688, vocabulary 4096, untied head,
float32: the size of benchmarks/models.py's forward and train-step rows).
The prompts are a batch of 4 random prompts of 16 tokens each (one length,
no padding); decoding is greedy, 64 new tokens, no stop tokens, so every
call does the same work whatever tokens come out.

Rows (each measured in this one run, the two sides interleaved):

- generate per token, blox vs the hand-written JAX decoder of
  benchmarks/generation_reference.py (one jitted prefill + `fori_loop` of
  decode steps over a `dynamic_update_slice` cache), with the same weights
  (`models_reference.weights_from`). Per token is the time of one whole
  `generate` call (the prefill included, until its tokens are ready:
  `jax.block_until_ready`) divided by the number of new tokens. Before
  timing, both sides' tokens are checked equal, and after it too. Target
  <= 1.05x.
- time to first token: the same two programs with `max_new_tokens=1` (the
  prefill and one argmax), interleaved likewise. Reported.
- generate tokens/s, blox vs Hugging Face `transformers` (torch, on the CPU):
  the same model written with `blox.models.save_pretrained`, loaded with
  `AutoModelForCausalLM` in float32, `model.generate(..., do_sample=False)`
  of the same prompts and as many new tokens, interleaved with blox's
  `generate`. Tokens/s counts every row's new tokens (batch x new tokens)
  over the whole call; the ratio is blox time / transformers time (below
  1.00x: blox is faster). The note says how many of the tokens agree. One
  row with as many torch threads as torch takes by default (one per core),
  and, when that is more than one, a row with one thread: on a machine
  shared with other work, torch's threads wait for each other at every
  operation, and the second row shows how much of its time that is.
  Without torch and transformers (`uv sync --group interop`) one row shows
  blox's tokens/s from the first row, and no ratio.

Both JAX sides compile once before the rounds; every call's outputs are
carried to the next call and dropped there (the prompts stay the same).

Usage, from the repository root:

  uv run benchmarks/generation.py           # full sizes (under a minute without torch)
  uv run benchmarks/generation.py --smoke   # tiny sizes, one round

The transformers rows need torch and transformers in the same environment
(the `interop` group); with them, the full run takes longer (see BENCHMARKS.md).

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name.startswith('generate per token')  # doctest: +SKIP
  True
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ itself on the path; the benchmark
# modules import each other as `benchmarks.<name>` from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import blox as bx  # noqa: E402
from benchmarks import generation_reference as hand  # noqa: E402
from benchmarks import models_reference as reference  # noqa: E402
from benchmarks.models import architecture, describe, llama  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    Row, compare, count_ops, format_seconds, interleaved_times,
)
from blox import models  # noqa: E402

__all__ = ["run"]

INTEROP_HINT = "transformers not installed (uv sync --group interop)"


@dataclasses.dataclass(frozen=True)
class Setup:
  """The sizes of one benchmark run."""

  model: dict[str, Any]  # a Hugging Face config
  batch: int
  prompt_length: int
  new_tokens: int
  calls: int  # generate calls per round, on each side
  first_token_calls: int
  rounds: int
  transformers_rounds: int  # one call per round: an eager call is much longer


FULL = Setup(
    model=llama(256, 4, 688, 4096, 4, 2), batch=4, prompt_length=16, new_tokens=64, calls=1,
    first_token_calls=5, rounds=21, transformers_rounds=3,
)
SMOKE = Setup(
    model=llama(64, 2, 128, 256, 4, 2), batch=2, prompt_length=4, new_tokens=4, calls=1,
    first_token_calls=1, rounds=1, transformers_rounds=1,
)

# A generate call: the prompts in, the new tokens out.
Generate = Callable[[jax.Array], jax.Array]


def _carry(generate: Generate) -> Callable[..., tuple[Any, ...]]:
  """`generate` as `timing.compare` runs it: `(prompts, last tokens) -> (prompts, new tokens)`."""

  def step(prompts: jax.Array, _: Any) -> tuple[Any, ...]:
    return prompts, generate(prompts)

  return step


def blox_generate(model: models.CausalLM, params: bx.Params, new_tokens: int) -> Generate:
  """`blox.models.generate` of `new_tokens` greedy tokens, called as a user would."""

  def generate(prompts: jax.Array) -> jax.Array:
    return models.generate(model, params, prompts, max_new_tokens=new_tokens)

  return generate


def hand_generate(weights: reference.Weights, arch: reference.Architecture,
                  new_tokens: int) -> Generate:
  """The hand-written greedy decoder of `new_tokens` tokens, the same model's weights."""

  def generate(prompts: jax.Array) -> jax.Array:
    # jax.jit's wrapper returns Any to mypy.
    tokens: jax.Array = hand.generate(weights, prompts, arch, max_new_tokens=new_tokens)
    return tokens

  return generate


def check_equal(blox_tokens: Any, hand_tokens: Any, when: str) -> None:
  """Raises AssertionError when the two greedy decoders chose different tokens."""
  blox_tokens, hand_tokens = np.asarray(blox_tokens), np.asarray(hand_tokens)
  if not np.array_equal(blox_tokens, hand_tokens):
    differ = int(np.sum(blox_tokens != hand_tokens))
    raise AssertionError(
        f"{when}, blox's and the hand-written generate chose different tokens:"
        f" {differ} of {blox_tokens.size} differ.")


def decode_step_ops(
    model: models.CausalLM, params: bx.Params, weights: reference.Weights,
    arch: reference.Architecture, prompts: jax.Array, max_length: int,
) -> str:
  """`N vs M ops`: the primitives one decode step traces to in blox and by hand.

  The decode step, not the whole `generate`: it is what the loop repeats
  for all but the first token (the prefill runs once per call).
  """
  batch = prompts.shape[0]
  token = prompts[:, 0]
  cache = model.init_cache(batch, max_length)
  blox_count = count_ops(lambda p, t, c: model.decode_step(p, t, c)[0], params, token, cache)
  hand_cache = hand.empty_cache(weights, batch, max_length, arch)
  hand_count = count_ops(
      lambda w, t, c: hand.decode_step(w, t, c, jnp.int32(0), arch), weights, token, hand_cache)
  return f"{blox_count} vs {hand_count} ops per decode step"


def per_token_row(
    setup: Setup, blox: Generate, baseline: Generate, prompts: jax.Array, label: str,
    counted: str,
) -> tuple[Row, float]:
  """The per-token row, and blox's median seconds per call (for the tokens/s row)."""
  first = blox(prompts)
  check_equal(first, baseline(prompts), "Before timing")
  times, states = interleaved_times(
      {"blox": (_carry(blox), (prompts, first)), "hand": (_carry(baseline), (prompts, first))},
      steps=setup.calls, rounds=setup.rounds,
  )
  check_equal(states["blox"][1], states["hand"][1], "After timing")
  ratio = statistics.median(b / h for b, h in zip(times["blox"], times["hand"]))
  blox_s, hand_s = (statistics.median(times[side]) for side in ("blox", "hand"))
  row = Row(
      f"generate per token ({label})", format_seconds(blox_s / setup.new_tokens),
      format_seconds(hand_s / setup.new_tokens), ratio, "<= 1.05x",
      f"whole call / {setup.new_tokens}; median of {setup.rounds} rounds; {counted};"
      " tokens equal",
  )
  return row, blox_s


def first_token_row(setup: Setup, blox: Generate, baseline: Generate, prompts: jax.Array,
                    label: str) -> Row:
  first = blox(prompts)
  check_equal(first, baseline(prompts), "For the first token")
  result = compare(
      _carry(blox), (prompts, first), _carry(baseline), (prompts, first),
      steps=setup.first_token_calls, rounds=setup.rounds,
  )
  return Row(
      f"generate time to first token ({label})", format_seconds(result.blox_s),
      format_seconds(result.baseline_s), result.ratio, "report",
      f"max_new_tokens=1: the prefill and one argmax; median of {result.rounds} rounds",
  )


def tokens_per_second(tokens: int, seconds: float) -> str:
  return f"{tokens / seconds:,.0f} tok/s"


def interop_available() -> bool:
  """Whether torch and transformers can be imported (the `interop` group)."""
  return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def load_transformers(model: models.CausalLM, params: bx.Params) -> Any:
  """The model as `transformers` loads it: written with `save_pretrained`, read back in float32."""
  import torch
  import transformers

  # The load's progress bar and advice would land in the middle of the table's output.
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  with tempfile.TemporaryDirectory(prefix="blox-generation-benchmark-") as folder:
    models.save_pretrained(model, params, folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  hf_model.eval()
  # No end-of-sequence token: every row runs to max_new_tokens, as blox's do.
  hf_model.generation_config.eos_token_id = None
  return hf_model


def transformers_row(
    setup: Setup, hf_model: Any, blox: Generate, prompts: jax.Array, label: str,
) -> Row:
  """blox's generate against `hf_model.generate`, with torch's current number of threads."""
  import torch
  import transformers

  ids = torch.from_numpy(np.asarray(prompts).astype(np.int64))
  mask = torch.ones_like(ids)

  def hf_step(ids: Any, _: Any) -> tuple[Any, ...]:
    with torch.inference_mode():
      out = hf_model.generate(
          ids, attention_mask=mask, max_new_tokens=setup.new_tokens,
          min_new_tokens=setup.new_tokens, do_sample=False, pad_token_id=0)
    return ids, out[:, setup.prompt_length:].numpy()

  # One eager call can take seconds on a loaded machine, so no call is made
  # for the check alone: it compares the tokens of each side's last call.
  times, states = interleaved_times(
      {"blox": (_carry(blox), (prompts, None)), "transformers": (hf_step, (ids, None))},
      steps=1, rounds=setup.transformers_rounds, warmup=1,
  )
  tokens = setup.batch * setup.new_tokens
  # Two float32 implementations round differently: a near tie could tip the
  # argmax one way in one and the other way in the other. The timing does
  # not depend on it (no stop tokens), so a difference is reported, not fatal.
  equal = int(np.sum(np.asarray(states["blox"][1]) == states["transformers"][1]))
  agree = "tokens equal" if equal == tokens else f"{equal} of {tokens} tokens equal"
  ratio = statistics.median(b / t for b, t in zip(times["blox"], times["transformers"]))
  blox_s, hf_s = (statistics.median(times[side]) for side in ("blox", "transformers"))
  threads = torch.get_num_threads()
  return Row(
      f"generate tokens/s vs transformers, torch {threads} thread{'s' if threads > 1 else ''}"
      f" ({label})", tokens_per_second(tokens, blox_s), tokens_per_second(tokens, hf_s), ratio,
      "report",
      f"baseline: transformers {transformers.__version__}, torch {torch.__version__}, eager,"
      f" same checkpoint; median of {setup.transformers_rounds} rounds; {agree}",
  )


def transformers_rows(
    setup: Setup, model: models.CausalLM, params: bx.Params, blox: Generate,
    prompts: jax.Array, label: str, blox_call_s: float,
) -> list[Row]:
  """The rows against `transformers`: torch's default threads, and one thread.

  On a machine shared with other work, torch's threads wait for each other
  at every operation (its default is one per core): the one-thread row
  shows what that costs. Without torch, one row of blox's tokens/s alone.
  """
  if not interop_available():
    # blox's side was timed in the per-token row; the other side cannot be.
    tokens = setup.batch * setup.new_tokens
    return [Row(f"generate tokens/s vs transformers ({label})",
                tokens_per_second(tokens, blox_call_s), "-", None, "report", INTEROP_HINT)]
  import torch

  hf_model = load_transformers(model, params)
  rows = [transformers_row(setup, hf_model, blox, prompts, label)]
  default = torch.get_num_threads()
  if default > 1:
    torch.set_num_threads(1)
    try:
      rows.append(transformers_row(setup, hf_model, blox, prompts, label))
    finally:
      torch.set_num_threads(default)
  return rows


def run(smoke: bool = False) -> list[Row]:
  """Every row of this benchmark, in the order of the module docstring."""
  setup = SMOKE if smoke else FULL
  model, params = models.create(setup.model)
  arch = architecture(model.architecture)
  weights = reference.weights_from(params)
  shape = (setup.batch, setup.prompt_length)
  tokens = np.random.default_rng(1).integers(0, setup.model["vocab_size"], shape, np.int32)
  prompts = jax.device_put(tokens, jax.devices()[0])
  label = f"{describe(setup.model)}, batch {setup.batch}x{setup.prompt_length}"
  print("  generation: per token ...", file=sys.stderr, flush=True)
  counted = decode_step_ops(
      model, params, weights, arch, prompts, setup.prompt_length + setup.new_tokens)
  row, blox_call_s = per_token_row(
      setup, blox_generate(model, params, setup.new_tokens),
      hand_generate(weights, arch, setup.new_tokens), prompts,
      f"{label}, {setup.new_tokens} new, greedy", counted)
  rows = [row]
  print("  generation: first token ...", file=sys.stderr, flush=True)
  rows.append(first_token_row(
      setup, blox_generate(model, params, 1), hand_generate(weights, arch, 1), prompts, label))
  print("  generation: transformers ...", file=sys.stderr, flush=True)
  rows.extend(transformers_rows(
      setup, model, params, blox_generate(model, params, setup.new_tokens), prompts,
      f"{label}, {setup.new_tokens} new, greedy", blox_call_s))
  return rows


if __name__ == "__main__":
  from benchmarks.timing import print_table

  # uv run benchmarks/generation.py [--smoke]; benchmarks/run.py runs these rows too.
  smoke = "--smoke" in sys.argv[1:]
  print_table(run(smoke), smoke)
