"""`create`: a new causal LM of a pretrained family, initialised at random.

For a model trained from scratch, or a small checkpoint made locally (the
tests and examples, where nothing can be downloaded). The params are drawn
from a blox `Rng`, whose state is dropped afterwards: a pretrained model has
no randomness at runtime, so `create` and `load_pretrained` give params of
the same structure.

Example:
  >>> model, params = create({
  ...     'model_type': 'gpt2', 'vocab_size': 16, 'n_embd': 8, 'n_head': 2, 'n_layer': 1,
  ...     'n_positions': 32})
  >>> sorted({path[2] for path in params})
  ['embed', 'final_norm', 'layers', 'positions']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph
from blox.models._causal_lm import CausalLM
from blox.models._config import ModelConfig
from blox.nn import Rng
from blox.params import Params

__all__ = ["create"]


def create(
    config: ModelConfig | Mapping[str, Any], *, seed: int = 0, param_dtype: Any = jnp.float32,
    name: str = "model",
) -> tuple[CausalLM, Params]:
  """A `CausalLM` for `config` (a `ModelConfig` or a Hugging Face config dict)
  and its locked params, drawn at random from `seed`.

  The initializers are blox's layer defaults (truncated-normal kernels,
  unit norm scales; Gemma's `1 + scale` norms start at zero scale).
  """
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_hf(dict(config, dtype=jnp.dtype(param_dtype).name))
  graph = Graph(name)
  rng = Rng(Graph("create").child("rng"))
  model = CausalLM(graph.child("lm"), config, rng=rng, param_dtype=param_dtype)

  @jax.jit
  def init() -> Params:
    return rng.init(model, jnp.zeros((1, 1), jnp.int32), seed=seed)

  mine, _ = init().split(lambda path, _: path[0] == name)
  return model, mine.locked()
