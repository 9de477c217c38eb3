"""blox.models: pretrained model families, Hugging Face checkpoints in and out.

- `load_pretrained(folder, *, param_dtype=None, mesh=None, rules=None)`: a
  Hugging Face folder (config.json and safetensors) as a `CausalLM` and its
  locked `Params`, streamed straight into place (sharded on a mesh).
- `save_pretrained(model, params, folder, *, max_shard_size='5GB')`: the
  same layout back, which `transformers` loads.
- `create(config, *, seed=0)`: a new model of a family, at random.
- `CausalLM`: `logits, params = model(params, ids, mask=...)`, and the
  decoding interface `init_cache` / `prefill` / `decode_step`.
- `generate(model, params, prompts, *, max_new_tokens, ...)`: greedy or
  sampled (temperature, top-k, top-p, min-p) decoding on device, for any
  model with that interface.
- `add_lora` / `merge_lora`, and `save_lora` / `load_lora` in PEFT's layout:
  low-rank adapters beside the kernels a regular expression names.
- `quantize(model, params, *, bits=8 | 4, group_size=None, calibration=None)`:
  weight-only int8 / int4 kernels and embedding tables, dequantized in each
  product (and in each lookup, only the rows looked up); kernels rounded to
  nearest, or by GPTQ on calibration batches.

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
from blox.models._generate import DecodingModel as DecodingModel
from blox.models._generate import generate as generate
from blox.models._load import CheckpointMismatchError as CheckpointMismatchError
from blox.models._load import load_pretrained as load_pretrained
from blox.models._load import read_config as read_config
from blox.models._lora import add_lora as add_lora
from blox.models._lora import merge_lora as merge_lora
from blox.models._peft import load_lora as load_lora
from blox.models._peft import save_lora as save_lora
from blox.models._quantize import enable_quantized_weights as enable_quantized_weights
from blox.models._quantize import quantize as quantize
from blox.models._quantize_report import QuantizationReport as QuantizationReport
from blox.models._quantize_report import quantization_report as quantization_report
from blox.models._rules import SHARDING_RULES as SHARDING_RULES
from blox.models._save import save_pretrained as save_pretrained
from blox.models._version import __version__ as __version__

__all__ = [
    "SHARDING_RULES",
    "CausalLM",
    "CheckpointMismatchError",
    "DecoderBlock",
    "DecodingModel",
    "LayerInputs",
    "ModelConfig",
    "QuantizationReport",
    "RopeLayer",
    "UnsupportedConfigError",
    "__version__",
    "add_lora",
    "create",
    "enable_quantized_weights",
    "generate",
    "load_lora",
    "load_pretrained",
    "merge_lora",
    "quantization_report",
    "quantize",
    "read_config",
    "save_lora",
    "save_pretrained",
]
