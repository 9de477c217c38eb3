"""`ModelConfig`: what a pretrained causal LM computes, read from a `config.json`.

Every supported family (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3,
GPT-2) is one decoder-only transformer with a few switches: the norm, the
MLP, biases, q/k norms, positions, per-layer sliding windows and rotary
frequencies, soft-capping, scaled embeddings and a tied head. `from_hf`
reads those switches from a Hugging Face config (both the `rope_parameters`
of transformers 5 and the older `rope_theta` / `rope_scaling` keys); a
field that would change the computation in a way blox does not reproduce is
an error naming it, never silently ignored.

Example:
  >>> config = ModelConfig.from_hf({
  ...     'model_type': 'llama', 'vocab_size': 128, 'hidden_size': 32,
  ...     'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4,
  ...     'num_key_value_heads': 2, 'rms_norm_eps': 1e-6})
  >>> config.family, config.head_dim, config.sliding_windows, config.rope[0]
  ('llama', 8, (None, None), RopeLayer(base=10000.0, scaling=None))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from blox.nn import RopeScaling

__all__ = ["FAMILIES", "ModelConfig", "RopeLayer", "UnsupportedConfigError"]

# model_type -> family. Gemma 3's text-only checkpoints say 'gemma3_text'.
FAMILIES: dict[str, str] = {
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma2": "gemma2", "gemma3_text": "gemma3", "gpt2": "gpt2",
}

_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")

# What to do about a config blox cannot reproduce: editing it would load
# weights into a model that computes something else.
_ELSEWHERE = (
    "Loading it anyway would compute something other than the checkpoint's model:"
    " use a library that implements it (e.g. transformers)."
)


class UnsupportedConfigError(ValueError):
  """A config blox cannot reproduce exactly: an unknown family or a field value."""


class RopeLayer(NamedTuple):
  """One layer's rotary positions: the base and the frequency scaling."""

  base: float
  scaling: RopeScaling | None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture of a pretrained causal LM, family by family the same fields."""

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  max_positions: int
  norm: str  # 'rms' or 'layer'
  norm_epsilon: float
  norm_offset: float  # 1.0: Gemma's `x * (1 + scale)`
  activation: str  # 'silu' or 'gelu_tanh'
  gated_mlp: bool
  qkv_bias: bool
  out_bias: bool
  mlp_bias: bool
  qk_norm: bool
  learned_positions: bool
  rope: tuple[RopeLayer, ...] | None
  sliding_windows: tuple[int | None, ...]
  query_scale: float | None
  attention_soft_cap: float | None
  final_soft_cap: float | None
  sandwich_norms: bool  # Gemma: norms after attention and MLP too
  scale_embeddings: bool  # Gemma: embeddings times sqrt(hidden_size)
  tie_embeddings: bool
  dtype: str
  hf_config: str = dataclasses.field(default="{}", repr=False, compare=False)
  """The config.json this came from (JSON text), written back on save."""

  @property
  def hf(self) -> dict[str, Any]:
    """The Hugging Face config as a dict (a fresh copy)."""
    loaded: dict[str, Any] = json.loads(self.hf_config)
    return loaded

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Reads a Hugging Face `config.json` (as a dict); see the module docstring.

    `source` names the config in error messages (`load_pretrained` gives its path).

    Raises:
      UnsupportedConfigError: an unknown `model_type`, or a field whose value
        changes the computation in a way blox does not reproduce.
    """
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
      raise UnsupportedConfigError(
          f"{source}: model_type {model_type!r} is not supported; blox.models reads"
          f" {sorted(FAMILIES)}; load it with a library that implements it (e.g. transformers)."
      )
    reader = _Reader(dict(config), FAMILIES[str(model_type)], source)
    fields = _gpt2(reader) if reader.family == "gpt2" else _decoder(reader)
    return cls(**fields, hf_config=json.dumps(dict(config), sort_keys=True))


class _Reader:
  """Typed access to one config's fields, with errors that name the field."""

  def __init__(self, config: dict[str, Any], family: str, source: str = "config.json") -> None:
    self.config, self.family, self.source = config, family, source

  def fail(self, field: str, why: str) -> UnsupportedConfigError:
    value = self.config.get(field)
    return UnsupportedConfigError(
        f"{self.source} ({self.family}): {field}={value!r} {why}; blox.models supports"
        f" the families {sorted(set(FAMILIES.values()))} with the fields their"
        f" released checkpoints use. {_ELSEWHERE}"
    )

  def int(self, field: str, default: int | None = None) -> int:
    value = self.config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise self.fail(field, "must be a positive integer")
    return value

  def number(self, field: str, default: float | None = None) -> float:
    value = self.config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise self.fail(field, "must be a number")
    return float(value)

  def optional_number(self, field: str) -> float | None:
    return None if self.config.get(field) is None else self.number(field)

  def flag(self, field: str, default: bool = False) -> bool:
    value = self.config.get(field, default)
    if value is None:
      return default
    if not isinstance(value, bool):
      raise self.fail(field, "must be true or false")
    return value

  def refuse(self, field: str, allowed: Any, why: str) -> None:
    """Fails unless the field is absent, None or one of `allowed`."""
    value = self.config.get(field)
    if value is not None and value not in allowed:
      raise self.fail(field, why)

  def dtype(self) -> str:
    value = self.config.get("dtype", self.config.get("torch_dtype", "float32"))
    return str(value or "float32")


def _gpt2(read: _Reader) -> dict[str, Any]:
  hidden = read.int("n_embd")
  heads = read.int("n_head")
  if hidden % heads:
    raise read.fail("n_head", f"must divide n_embd={hidden}")
  read.refuse("activation_function", _GELU_TANH, "is not a tanh-approximated GELU")
  read.refuse("scale_attn_by_inverse_layer_idx", (False,), "scales attention per layer")
  read.refuse("add_cross_attention", (False,), "adds cross-attention")
  read.refuse("scale_attn_weights", (True,), "turns the 1/sqrt(head_dim) scale off")
  layers = read.int("n_layer")
  return dict(
      family="gpt2", vocab_size=read.int("vocab_size"), hidden_size=hidden,
      intermediate_size=4 * hidden if read.config.get("n_inner") is None else read.int("n_inner"),
      num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
      max_positions=read.int("n_positions"), norm="layer",
      norm_epsilon=read.number("layer_norm_epsilon", 1e-5), norm_offset=0.0,
      activation="gelu_tanh", gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True,
      qk_norm=False, learned_positions=True, rope=None, sliding_windows=(None,) * layers,
      query_scale=None, attention_soft_cap=None, final_soft_cap=None, sandwich_norms=False,
      scale_embeddings=False, tie_embeddings=read.flag("tie_word_embeddings", True),
      dtype=read.dtype(),
  )


def _decoder(read: _Reader) -> dict[str, Any]:
  family = read.family
  gemma = family in ("gemma2", "gemma3")
  hidden, heads = read.int("hidden_size"), read.int("num_attention_heads")
  layers = read.int("num_hidden_layers")
  head_dim = read.config.get("head_dim") or hidden // heads
  read.refuse("partial_rotary_factor", (1, 1.0), "rotates only part of each head")
  read.refuse("use_bidirectional_attention", (False,), "attends in both directions")
  read.refuse("pretraining_tp", (1,), "splits the projections (tensor-parallel pretraining)")
  activation_field = "hidden_activation" if gemma else "hidden_act"
  act = read.config.get(activation_field) or ("gelu_pytorch_tanh" if gemma else "silu")
  if act == "silu":
    activation = "silu"
  elif act in _GELU_TANH:
    activation = "gelu_tanh"
  else:
    raise read.fail(activation_field, "is not silu or a tanh-approximated GELU")
  attention_bias = read.flag("attention_bias")
  qkv_bias = family == "qwen2" or attention_bias
  out_bias = attention_bias and family != "qwen2"
  final_cap = read.optional_number("final_logit_softcapping") if gemma else None
  # transformers' Gemma 3 attention never applies attn_logit_softcapping.
  attention_cap = read.optional_number("attn_logit_softcapping") if family == "gemma2" else None
  query_scale = read.number("query_pre_attn_scalar") ** -0.5 if gemma else None
  return dict(
      family=family, vocab_size=read.int("vocab_size"), hidden_size=hidden,
      intermediate_size=read.int("intermediate_size"), num_layers=layers, num_heads=heads,
      num_kv_heads=read.int("num_key_value_heads", heads), head_dim=int(head_dim),
      max_positions=read.int("max_position_embeddings", 2048), norm="rms",
      norm_epsilon=read.number("rms_norm_eps", 1e-6), norm_offset=1.0 if gemma else 0.0,
      activation=activation, gated_mlp=True, qkv_bias=qkv_bias, out_bias=out_bias,
      mlp_bias=read.flag("mlp_bias"), qk_norm=family in ("qwen3", "gemma3"),
      learned_positions=False, rope=_rope_layers(read, layers),
      sliding_windows=_sliding_windows(read, layers), query_scale=query_scale,
      attention_soft_cap=attention_cap, final_soft_cap=final_cap, sandwich_norms=gemma,
      scale_embeddings=gemma,
      tie_embeddings=read.flag("tie_word_embeddings", gemma or family == "qwen2"),
      dtype=read.dtype(),
  )


def _layer_types(read: _Reader, layers: int) -> list[str]:
  """'sliding_attention' or 'full_attention' per layer, as transformers decides."""
  types = read.config.get("layer_types")
  if types is not None:
    if not isinstance(types, list) or len(types) != layers or not set(types) <= {
        "sliding_attention", "full_attention"}:
      raise read.fail("layer_types", f"must list 'sliding_attention' or 'full_attention' for each of {layers} layers")
    return [str(t) for t in types]
  family, window = read.family, read.config.get("sliding_window")
  if family == "gemma2":
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
  if family == "gemma3":
    pattern = read.config.get("sliding_window_pattern") or read.config.get("_sliding_window_pattern") or 6
    return ["full_attention" if (i + 1) % int(pattern) == 0 else "sliding_attention" for i in range(layers)]
  if family in ("qwen2", "qwen3"):
    first = read.config.get("max_window_layers", layers)
    return ["sliding_attention" if window is not None and i >= int(first) else "full_attention"
            for i in range(layers)]
  kind = "sliding_attention" if family == "mistral" and window is not None else "full_attention"
  return [kind] * layers


def _sliding_windows(read: _Reader, layers: int) -> tuple[int | None, ...]:
  window = read.config.get("sliding_window")
  if read.family in ("qwen2", "qwen3") and not read.flag("use_sliding_window"):
    window = None  # transformers drops the window unless use_sliding_window
  if window is not None:
    window = read.int("sliding_window")
  if read.family == "llama":
    return (None,) * layers
  return tuple(window if kind == "sliding_attention" else None
               for kind in _layer_types(read, layers))


def _rope_layers(read: _Reader, layers: int) -> tuple[RopeLayer, ...]:
  """Each layer's rotary base and scaling (Gemma 3: local and global layers differ)."""
  parameters = read.config.get("rope_parameters")
  if read.family == "gemma3":
    types = _layer_types(read, layers)
    if isinstance(parameters, dict) and "full_attention" in parameters:
      by_type = {kind: _rope(read, parameters[kind]) for kind in ("sliding_attention", "full_attention")}
    else:  # older checkpoints: a global theta (and scaling), a local base
      by_type = {
          "full_attention": _rope(read, {"rope_theta": read.config.get("rope_theta", 1e6),
                                         **(read.config.get("rope_scaling") or {})}),
          "sliding_attention": RopeLayer(read.number("rope_local_base_freq", 10000.0), None),
      }
    return tuple(by_type[kind] for kind in types)
  if not isinstance(parameters, dict):
    parameters = {"rope_theta": read.config.get("rope_theta", 10000.0),
                  **(read.config.get("rope_scaling") or {})}
  return (_rope(read, parameters),) * layers


def _rope(read: _Reader, parameters: Any) -> RopeLayer:
  if not isinstance(parameters, dict):
    raise read.fail("rope_parameters", "must be a mapping")
  base = parameters.get("rope_theta", 10000.0)
  if isinstance(base, bool) or not isinstance(base, (int, float)):
    raise read.fail("rope_parameters", "needs a numeric rope_theta")
  kind = parameters.get("rope_type", parameters.get("type", "default"))
  if kind == "default":
    return RopeLayer(float(base), None)
  if kind == "linear":
    return RopeLayer(float(base), RopeScaling("linear", float(parameters["factor"])))
  if kind == "llama3":
    return RopeLayer(float(base), RopeScaling(
        "llama3", float(parameters["factor"]),
        low_freq_factor=float(parameters.get("low_freq_factor", 1.0)),
        high_freq_factor=float(parameters.get("high_freq_factor", 4.0)),
        original_max_position=int(parameters.get("original_max_position_embeddings", 8192)),
    ))
  field = "rope_parameters" if "rope_parameters" in read.config else "rope_scaling"
  raise read.fail(field, f"uses rope_type {kind!r}; blox supports 'default', 'linear' and 'llama3'")
