"""blox.models: pretrained model families, Hugging Face checkpoints in and out.

- `load_pretrained(folder, *, param_dtype=None, mesh=None, rules=None)`: a
  Hugging Face folder (config.json and safetensors) as a `CausalLM` and its
  locked `Params`, streamed straight into place (sharded on a mesh).
- `save_pretrained(model, params, folder, *, max_shard_size='5GB')`: the
  same layout back, which `transformers` loads.
- `create(config, *, seed=0)`: a new model of a family, at random.
- `CausalLM`: `logits, params = model(params, ids, mask=...)`, and the
  decoding interface `init_cache` / `prefill` / `decode_step`.

Families: Llama 2/3 (with Llama 3 RoPE scaling), Mistral, Qwen2, Qwen3,
Gemma 2, Gemma 3 (text) and GPT-2. Reads and writes safetensors through
numpy; never needs torch.

Example:
  >>> import jax.numpy as jnp
  >>> model, params = create({
  ...     'model_type': 'llama', 'vocab_size': 32, 'hidden_size': 16, 'intermediate_size': 32,
  ...     'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> logits, _ = model(params, jnp.array([[1, 2, 3]]))
  >>> logits.shape
  (1, 3, 32)
"""

from blox.models._causal_lm import CausalLM as CausalLM
from blox.models._config import ModelConfig as ModelConfig
from blox.models._config import RopeLayer as RopeLayer
from blox.models._config import UnsupportedConfigError as UnsupportedConfigError
from blox.models._create import create as create
from blox.models._decoder_block import DecoderBlock as DecoderBlock
from blox.models._decoder_block import LayerInputs as LayerInputs
from blox.models._load import CheckpointMismatchError as CheckpointMismatchError
from blox.models._load import load_pretrained as load_pretrained
from blox.models._load import read_config as read_config
from blox.models._rules import SHARDING_RULES as SHARDING_RULES
from blox.models._save import save_pretrained as save_pretrained
from blox.models._version import __version__ as __version__

__all__ = [
    "SHARDING_RULES",
    "CausalLM",
    "CheckpointMismatchError",
    "DecoderBlock",
    "LayerInputs",
    "ModelConfig",
    "RopeLayer",
    "UnsupportedConfigError",
    "__version__",
    "create",
    "load_pretrained",
    "read_config",
    "save_pretrained",
]
