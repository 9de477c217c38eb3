"""Where each Hugging Face tensor goes in a blox `CausalLM`, and how it is laid out.

A `TensorMap` ties one checkpoint tensor to one blox param (one layer of it,
for the stacked layers) through a few `ops` applied in order to the
checkpoint's array: `Transpose` (PyTorch's `[out, in]` Linear weights to
blox's `[in, out]` kernels), `Split` (one flat `heads * head_dim` axis into
blox's `[heads, head_dim]`) and `Take` (GPT-2's fused `c_attn` into its
query, key and value). The same maps run backwards to save.

Example:
  >>> import numpy as np
  >>> ops = (Transpose((1, 0)), Split(1, (2, 3)))   # q_proj [6, 4] -> query/kernel [4, 2, 3]
  >>> source_shape((4, 2, 3), ops)
  (6, 4)
  >>> weight = np.arange(24.0).reshape(6, 4)
  >>> kernel = forward(weight, ops)
  >>> kernel.shape, bool((backward(kernel, ops) == weight).all())
  ((4, 2, 3), True)
  >>> block = read_block(lambda index: weight[index], (slice(0, 4), slice(1, 2), slice(0, 3)), ops)
  >>> bool((block == kernel[:, 1:2]).all())
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from blox.models._config import ModelConfig

__all__ = [
    "Op", "Split", "Take", "TensorMap", "Transpose", "backward", "forward", "ignored",
    "read_block", "source_shape", "tensor_maps",
]

Path = tuple[str, ...]


class Transpose(NamedTuple):
  """Target axis `i` is source axis `perm[i]`."""

  perm: tuple[int, ...]


class Split(NamedTuple):
  """Source axis `axis` (of size `a * b`) becomes target axes `axis, axis + 1` of sizes `(a, b)`."""

  axis: int
  sizes: tuple[int, int]


class Take(NamedTuple):
  """Target is `source[start:stop]` along `axis` (source size `total` there)."""

  axis: int
  start: int
  stop: int
  total: int


Op = Transpose | Split | Take


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """Checkpoint tensor `hf` is (layer `layer` of) blox param `path`, after `ops`."""

  hf: str
  path: Path
  layer: int | None
  ops: tuple[Op, ...] = ()


def source_shape(target: Sequence[int], ops: Sequence[Op]) -> tuple[int, ...]:
  """The checkpoint shape that `ops` turn into `target`."""
  shape = list(target)
  for op in reversed(ops):
    if isinstance(op, Transpose):
      source = [0] * len(shape)
      for i, axis in enumerate(op.perm):
        source[axis] = shape[i]
      shape = source
    elif isinstance(op, Split):
      shape[op.axis:op.axis + 2] = [shape[op.axis] * shape[op.axis + 1]]
    else:
      shape[op.axis] = op.total
  return tuple(shape)


def forward(array: np.ndarray, ops: Sequence[Op], *, contiguous: bool = True) -> np.ndarray:
  """The checkpoint's `array` in blox's layout (a view of it where the ops
  allow and `contiguous` is False: the caller's copy then does the transpose)."""
  for op in ops:
    if isinstance(op, Transpose):
      array = np.transpose(array, op.perm)
    elif isinstance(op, Split):
      shape = array.shape
      array = array.reshape((*shape[:op.axis], *op.sizes, *shape[op.axis + 1:]))
    else:
      array = np.take(array, np.arange(op.start, op.stop), axis=op.axis)
  return np.ascontiguousarray(array) if contiguous else array


def backward(array: np.ndarray, ops: Sequence[Op]) -> np.ndarray:
  """blox's `array` in the checkpoint's layout (a `Take` leaves its part alone:
  the caller joins the parts of one tensor)."""
  for op in reversed(ops):
    if isinstance(op, Transpose):
      array = np.transpose(array, np.argsort(op.perm))
    elif isinstance(op, Split):
      shape = array.shape
      array = array.reshape((*shape[:op.axis], shape[op.axis] * shape[op.axis + 1], *shape[op.axis + 2:]))
  return np.ascontiguousarray(array)


def read_block(
    read: Callable[[tuple[slice, ...]], np.ndarray], index: tuple[slice, ...], ops: Sequence[Op],
    *, contiguous: bool = True,
) -> np.ndarray:
  """The block `index` (whole slices, step 1) of the blox array that `ops`
  make from a checkpoint tensor, reading only what it needs with `read(source_index)`.

  A `Split` must be the last op (as in every family's maps), so the block's
  `b` axis is read whole and sliced at the end.
  """
  ranges = [(s.start or 0, s.stop) for s in index]
  tail: tuple[int, slice] | None = None
  local: list[Op] = []
  for position, op in enumerate(reversed(ops)):
    if isinstance(op, Transpose):
      source = [(0, 0)] * len(ranges)
      for i, axis in enumerate(op.perm):
        source[axis] = ranges[i]
      ranges = source
      local.append(op)
    elif isinstance(op, Split):
      if position != 0:
        raise ValueError("read_block: a Split must be the last op of a TensorMap.")
      a_range, b_range = ranges[op.axis], ranges[op.axis + 1]
      b = op.sizes[1]
      tail = (op.axis + 1, slice(b_range[0], b_range[1]))
      ranges[op.axis:op.axis + 2] = [(a_range[0] * b, a_range[1] * b)]
      local.append(Split(op.axis, (a_range[1] - a_range[0], b)))
    else:
      start, stop = ranges[op.axis]
      ranges[op.axis] = (op.start + start, op.start + stop)
  block = forward(read(tuple(slice(start, stop) for start, stop in ranges)), list(reversed(local)),
                  contiguous=contiguous)
  if tail is not None:
    axis, wanted = tail
    block = block[(slice(None),) * axis + (wanted,)]
  return np.ascontiguousarray(block) if contiguous else block


def ignored(name: str, config: ModelConfig) -> bool:
  """Checkpoint entries that are not weights (GPT-2's causal-mask buffers) or
  that a tied head repeats (`lm_head.weight` equal to the embedding)."""
  if config.family == "gpt2" and name.endswith((".attn.bias", ".attn.masked_bias")):
    return True
  # Older Llama-style files store the rotary frequencies, which the config gives.
  if name.endswith(".rotary_emb.inv_freq"):
    return True
  return config.tie_embeddings and name == "lm_head.weight"


def tensor_maps(config: ModelConfig, root: Path = ("model",), prefix: str | None = None) -> list[TensorMap]:
  """Every checkpoint tensor of `config`'s family and where it goes under `root`.

  `prefix` is the checkpoint's name prefix ('model.' for the Llama-style
  families, 'transformer.' for GPT-2; some GPT-2 files have none); None
  means the family's usual one.
  """
  if config.family == "gpt2":
    return _gpt2_maps(config, root, "transformer." if prefix is None else prefix)
  return _llama_maps(config, root, "model." if prefix is None else prefix)


def _llama_maps(config: ModelConfig, root: Path, prefix: str) -> list[TensorMap]:
  heads, kv, d = config.num_heads, config.num_kv_heads, config.head_dim
  maps = [TensorMap(f"{prefix}embed_tokens.weight", (*root, "embed", "embedding"), None),
          TensorMap(f"{prefix}norm.weight", (*root, "final_norm", "scale"), None)]
  if not config.tie_embeddings:
    maps.append(TensorMap("lm_head.weight", (*root, "head", "kernel"), None, (Transpose((1, 0)),)))
  layer = (*root, "layers", "layer")
  linear = (Transpose((1, 0)),)
  gemma = config.sandwich_norms
  for i in range(config.num_layers):
    at = f"{prefix}layers.{i}."
    pairs: list[tuple[str, Path, tuple[Op, ...]]] = [
        ("input_layernorm.weight", ("attention_norm", "scale"), ()),
        ("post_attention_layernorm.weight",
         ("post_attention_norm" if gemma else "mlp_norm", "scale"), ()),
        ("self_attn.q_proj.weight", ("attention", "query", "kernel"), (*linear, Split(1, (heads, d)))),
        ("self_attn.k_proj.weight", ("attention", "key", "kernel"), (*linear, Split(1, (kv, d)))),
        ("self_attn.v_proj.weight", ("attention", "value", "kernel"), (*linear, Split(1, (kv, d)))),
        ("self_attn.o_proj.weight", ("attention", "out", "kernel"), (*linear, Split(0, (heads, d)))),
        ("mlp.gate_proj.weight", ("mlp", "gate", "kernel"), linear),
        ("mlp.up_proj.weight", ("mlp", "up", "kernel"), linear),
        ("mlp.down_proj.weight", ("mlp", "down", "kernel"), linear),
    ]
    if gemma:
      pairs += [("pre_feedforward_layernorm.weight", ("mlp_norm", "scale"), ()),
                ("post_feedforward_layernorm.weight", ("post_mlp_norm", "scale"), ())]
    if config.qkv_bias:
      pairs += [("self_attn.q_proj.bias", ("attention", "query", "bias"), (Split(0, (heads, d)),)),
                ("self_attn.k_proj.bias", ("attention", "key", "bias"), (Split(0, (kv, d)),)),
                ("self_attn.v_proj.bias", ("attention", "value", "bias"), (Split(0, (kv, d)),))]
    if config.out_bias:
      pairs.append(("self_attn.o_proj.bias", ("attention", "out", "bias"), ()))
    if config.mlp_bias:
      pairs += [(f"mlp.{name}_proj.bias", ("mlp", name, "bias"), ()) for name in ("gate", "up", "down")]
    if config.qk_norm:
      pairs += [("self_attn.q_norm.weight", ("attention", "query_norm", "scale"), ()),
                ("self_attn.k_norm.weight", ("attention", "key_norm", "scale"), ())]
    maps += [TensorMap(at + name, (*layer, *path), i, ops) for name, path, ops in pairs]
  return maps


def _gpt2_maps(config: ModelConfig, root: Path, prefix: str) -> list[TensorMap]:
  heads, d, width = config.num_heads, config.head_dim, config.hidden_size
  maps = [TensorMap(f"{prefix}wte.weight", (*root, "embed", "embedding"), None),
          TensorMap(f"{prefix}wpe.weight", (*root, "positions", "embedding"), None),
          TensorMap(f"{prefix}ln_f.weight", (*root, "final_norm", "scale"), None),
          TensorMap(f"{prefix}ln_f.bias", (*root, "final_norm", "bias"), None)]
  layer = (*root, "layers", "layer")
  for i in range(config.num_layers):
    at = f"{prefix}h.{i}."
    pairs: list[tuple[str, Path, tuple[Op, ...]]] = [
        ("ln_1.weight", ("attention_norm", "scale"), ()),
        ("ln_1.bias", ("attention_norm", "bias"), ()),
        ("ln_2.weight", ("mlp_norm", "scale"), ()),
        ("ln_2.bias", ("mlp_norm", "bias"), ()),
        ("attn.c_proj.weight", ("attention", "out", "kernel"), (Split(0, (heads, d)),)),
        ("attn.c_proj.bias", ("attention", "out", "bias"), ()),
        ("mlp.c_fc.weight", ("mlp", "up", "kernel"), ()),
        ("mlp.c_fc.bias", ("mlp", "up", "bias"), ()),
        ("mlp.c_proj.weight", ("mlp", "down", "kernel"), ()),
        ("mlp.c_proj.bias", ("mlp", "down", "bias"), ()),
    ]
    # c_attn is Conv1D [in, 3 * width]: the query's columns, the key's, the value's.
    for part, name in enumerate(("query", "key", "value")):
      span = (part * width, (part + 1) * width)
      pairs += [
          ("attn.c_attn.weight", ("attention", name, "kernel"),
           (Take(1, *span, 3 * width), Split(1, (heads, d)))),
          ("attn.c_attn.bias", ("attention", name, "bias"),
           (Take(0, *span, 3 * width), Split(0, (heads, d)))),
      ]
    maps += [TensorMap(at + name, (*layer, *path), i, ops) for name, path, ops in pairs]
  return maps
