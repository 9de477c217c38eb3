"""The committed Hugging Face reference fixtures of blox-models, for its tests.

Imported by module name (`packages/blox-models/tests` is on pytest's and
mypy's path). `fixtures/<family>/` holds a tiny random checkpoint as
`transformers` saves it and `reference.npz`, what `transformers` computed from
it; scripts/make_model_fixtures.py made both (fixtures/README.md says how).
Nothing here needs torch: `interop_available` tells whether a live comparison
with `transformers` can run as well.

Example:
  >>> reference = load_reference("llama")
  >>> reference.logits.shape, reference.greedy_tokens.shape
  ((2, 16, 128), (2, 16))
  >>> (fixture_folder("llama") / "config.json").is_file()
  True
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from blox.params import Params

__all__ = [
  "FAMILIES",
  "FIXTURES",
  "INTEROP_SYNC",
  "Reference",
  "fixture_folder",
  "greedy_tokens",
  "interop_available",
  "load_reference",
]

FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2")

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"

# What a skip message tells the reader to run for the live comparisons.
INTEROP_SYNC = "uv sync --group interop"


class Reference(NamedTuple):
  """One family's `reference.npz`: the inputs and what `transformers` computed.

  Attributes:
    input_ids: int32 [2, 16]; row 1 holds the pad id 0 after its 11 tokens.
    attention_mask: int32 [2, 16]; row 0 all ones, row 1 ones for 11 tokens.
    logits: float32 [2, 16, vocab], one forward pass with `attention_mask`
      (positions from 0 in both rows; padded keys masked out).
    prompt_ids: int32 [2, 8], two unpadded prompts.
    greedy_tokens: int32 [2, 16], the new tokens of greedy decoding of
      `prompt_ids`, never stopped by an end-of-sequence id.
    transformers_version: the `transformers` release that computed them.
  """

  input_ids: npt.NDArray[np.int32]
  attention_mask: npt.NDArray[np.int32]
  logits: npt.NDArray[np.float32]
  prompt_ids: npt.NDArray[np.int32]
  greedy_tokens: npt.NDArray[np.int32]
  transformers_version: str


def fixture_folder(family: str) -> pathlib.Path:
  """The Hugging Face model folder of `family` (config.json, safetensors, ...).

  Raises:
    ValueError: `family` is not one of `FAMILIES`.
  """
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
  return FIXTURES / family


def load_reference(family: str) -> Reference:
  """Reads `family`'s `reference.npz`, checking each array's dtype."""
  with np.load(fixture_folder(family) / "reference.npz") as data:
    arrays = {key: data[key] for key in data.files}
  # The npz stores the version as a 0-d unicode array.
  version = str(arrays.pop("transformers_version"))
  expected = {
    "input_ids": np.int32,
    "attention_mask": np.int32,
    "logits": np.float32,
    "prompt_ids": np.int32,
    "greedy_tokens": np.int32,
  }
  for key, dtype in expected.items():
    if arrays[key].dtype != dtype:
      raise TypeError(f"{family}: {key} is {arrays[key].dtype}, expected {np.dtype(dtype)}")
  return Reference(
    input_ids=arrays["input_ids"],
    attention_mask=arrays["attention_mask"],
    logits=arrays["logits"],
    prompt_ids=arrays["prompt_ids"],
    greedy_tokens=arrays["greedy_tokens"],
    transformers_version=version,
  )


def interop_available() -> bool:
  """Whether torch and transformers are installed (the `interop` group).

  Looks the modules up without importing them, so that asking costs nothing.
  """
  return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def greedy_tokens(model: Any, params: Params, prompts: Any, steps: int) -> npt.NDArray[np.int32]:
  """`steps` greedy tokens after `prompts [batch, length]` through a model's
  decoding interface itself (not `generate`): one prefill, then `decode_step`s."""
  prompts = jnp.asarray(prompts)
  cache = model.init_cache(prompts.shape[0], prompts.shape[1] + steps)

  @jax.jit
  def run(params: Params, prompts: jax.Array, cache: Any) -> jax.Array:
    (logits, cache), _ = model.prefill(params, prompts, cache)
    first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

    def step(carry: tuple[jax.Array, Any], _: None) -> tuple[tuple[jax.Array, Any], jax.Array]:
      token, cache = carry
      (logits, cache), _params = model.decode_step(params, token, cache)
      return (jnp.argmax(logits, -1).astype(jnp.int32), cache), token

    _, tokens = jax.lax.scan(step, (first, cache), None, length=steps)
    return tokens.T

  return np.asarray(run(params, prompts, cache), np.int32)
