"""`save_pretrained`: a blox `CausalLM` and its params as a Hugging Face folder.

The folder is what `transformers` writes: `config.json` (the config the
model was loaded from, its dtype brought up to date) and the weights as
safetensors, one file or shards with `model.safetensors.index.json`. Each
tensor is produced from the params only when its shard is written, so host
memory holds one tensor at a time; every file lands atomically.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.models._config import ModelConfig
  >>> from blox.models._causal_lm import CausalLM
  >>> config = ModelConfig.from_hf({
  ...     'model_type': 'qwen2', 'vocab_size': 16, 'hidden_size': 8, 'intermediate_size': 16,
  ...     'num_hidden_layers': 1, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> model = CausalLM(Graph('model').child('lm'), config)
  >>> _, params = model(Params(), jnp.zeros((1, 2), jnp.int32))
  >>> with tempfile.TemporaryDirectory() as folder:
  ...   [path.name for path in save_pretrained(model, params, folder)]
  ['model.safetensors', 'config.json']
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable

import jax
import numpy as np

from blox.models._causal_lm import CausalLM
from blox.models._layout import Take, TensorMap, backward, source_shape, tensor_maps
from blox.models._safetensors_write import PendingTensor, write_checkpoint
from blox.params import Params

__all__ = ["save_pretrained", "write_json"]


def save_pretrained(
    model: CausalLM,
    params: Params,
    folder: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
) -> list[pathlib.Path]:
  """Writes `model`'s weights from `params` and its config to `folder`.

  `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads the
  result, and `load_pretrained(folder)` gives back bit-identical params.

  Args:
    model: a `CausalLM` (from `load_pretrained` or `create`).
    params: its params; every value must be addressable from this process.
    folder: created if missing; files of an earlier save there are replaced.
    max_shard_size: the largest safetensors file, in bytes or as "5GB", "500MB".

  Returns:
    The files written: the weights (shards, then the index) and config.json.

  Raises:
    ValueError: params lack a weight of the model, or hold one that no
      process of this one can read whole.
  """
  config = model.architecture
  folder = pathlib.Path(folder)
  maps = tensor_maps(config, model.graph.path)
  grouped: dict[str, list[TensorMap]] = {}
  for entry in maps:
    grouped.setdefault(entry.hf, []).append(entry)
  dtypes = set()
  pending = []
  for name, entries in grouped.items():
    for entry in entries:
      if entry.path not in params:
        raise ValueError(
            f"save_pretrained: the params lack {'/'.join(entry.path)} (the checkpoint's"
            f" {name!r}); pass the params of this model.")
    value = params[entries[0].path].value
    if not getattr(value, "is_fully_addressable", True):
      raise ValueError(
          f"save_pretrained: {'/'.join(entries[0].path)} is spread over processes; gather"
          " it first (jax.experimental.multihost_utils.process_allgather) or save with"
          " orbax.")
    layer_shape = value.shape[1:] if entries[0].layer is not None else value.shape
    dtypes.add(np.dtype(value.dtype))
    shape = source_shape(layer_shape, entries[0].ops)
    pending.append(PendingTensor(name, shape, np.dtype(value.dtype), _producer(params, entries)))
  written = write_checkpoint(folder, pending, max_shard_size=max_shard_size)
  hf = config.hf or {}
  if len(dtypes) == 1:
    hf["dtype"] = next(iter(dtypes)).name
    hf.pop("torch_dtype", None)
  written.append(write_json(folder / "config.json", hf))
  return written


def _producer(params: Params, entries: list[TensorMap]) -> Callable[[], np.ndarray]:
  """The checkpoint tensor made from its blox param(s), computed on demand."""

  def produce() -> np.ndarray:
    parts = []
    for entry in sorted(entries, key=lambda e: _take_start(e)):
      value = params[entry.path].value
      if entry.layer is not None:
        value = value[entry.layer]
      parts.append(backward(np.asarray(jax.device_get(value)), entry.ops))
    if len(parts) == 1:
      return parts[0]
    take = entries[0].ops[0]
    assert isinstance(take, Take)  # only fused tensors have several parts
    return np.concatenate(parts, axis=take.axis)

  return produce


def _take_start(entry: TensorMap) -> int:
  return next((op.start for op in entry.ops if isinstance(op, Take)), 0)


def write_json(path: pathlib.Path, content: dict[str, object]) -> pathlib.Path:
  """`content` as JSON at `path`, atomically (a temporary file, fsync, rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as file:
      json.dump(content, file, indent=2, sort_keys=True)
      file.write("\n")
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    pathlib.Path(temporary).unlink(missing_ok=True)
    raise
  return path
