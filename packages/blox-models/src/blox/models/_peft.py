"""`save_lora` / `load_lora`: a `CausalLM`'s LoRA adapters in the PEFT layout.

The folder is what `peft.PeftModel.save_pretrained` writes for a causal LM:
`adapter_config.json` (`peft_type: "LORA"`, `r`, `lora_alpha`,
`target_modules` as Hugging Face module names such as `q_proj`, ...) and
`adapter_model.safetensors`, each adapter under the name of the Hugging
Face module it sits in:

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in]
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, r]

so `peft.PeftModel.from_pretrained(hf_model, folder)` runs the adapters
blox trained, and `load_lora` runs adapters that PEFT trained. blox's
adapters in the kernel's layout (`query/lora_b [r, heads, head_dim]`) are
flattened and transposed to PyTorch's `[out, in]` convention on the way.

The Llama-style families only (Llama, Mistral, Qwen2/3, Gemma 2/3): GPT-2
keeps its query, key and value in one fused `c_attn`, which PEFT adapts as
one module, unlike blox's three projections.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> from blox.models import add_lora, create
  >>> model, params = create({
  ...     'model_type': 'llama', 'vocab_size': 32, 'hidden_size': 16, 'intermediate_size': 32,
  ...     'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> model, adapted = add_lora(model, params, targets=r'.*(query|value)', rank=4, alpha=8)
  >>> folder = tempfile.mkdtemp()
  >>> [path.name for path in save_lora(model, adapted, folder)]
  ['adapter_model.safetensors', 'adapter_config.json']
  >>> model, params = create(model.architecture)   # a fresh base model
  >>> model, loaded = load_lora(model, params, folder)
  >>> path = ('model', 'lm', 'layers', 'layer', 'attention', 'value', 'lora_a')
  >>> bool((loaded[path].value == adapted[path].value).all())
  True
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.models._causal_lm import CausalLM
from blox.models._layout import Split, TensorMap, Transpose, tensor_maps
from blox.models._lora import LORA_A, LORA_ALPHA, LORA_B, LORA_RANK, LoraSite, add_lora, lora_sites
from blox.models._safetensors_format import DTYPES, SINGLE_FILE, SafetensorsError, read_header
from blox.models._safetensors_write import PendingTensor, write_checkpoint
from blox.models._save import write_json
from blox.params import Param, Params, Path, path_text

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "load_lora", "save_lora"]

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# PEFT's prefix of every tensor name: the PeftModel's base_model, its model.
_PREFIX = "base_model.model."


def _peft_names(model: CausalLM, params: Params) -> list[tuple[str, TensorMap, LoraSite]]:
  """`(module name, tensor map, site)` of every kernel that PEFT can adapt."""
  config = model.architecture
  if config.family == "gpt2":
    raise ValueError(
        f"{model.where()}: PEFT adapts GPT-2's fused c_attn as one module, blox its query,"
        " key and value apart; save_lora and load_lora support the Llama-style families."
        " merge_lora and save_pretrained export a GPT-2 fine-tune.")
  sites = {site.kernel_path(): site for site in lora_sites(model, params)}
  found = []
  for entry in tensor_maps(config, model.graph.path):
    site = sites.get(entry.path)
    if site is None or not entry.hf.endswith(".weight"):
      continue
    ops = entry.ops
    # Every adaptable kernel of these families is a PyTorch [out, in] weight
    # transposed, its heads maybe split out: flattening undoes the split.
    if not ops or ops[0] != Transpose((1, 0)) or any(not isinstance(op, Split) for op in ops[1:]):
      continue
    found.append((entry.hf[:-len(".weight")], entry, site))
  return found


def save_lora(
    model: CausalLM, params: Params, folder: str | os.PathLike[str], *,
    base_model_name_or_path: str | None = None,
) -> list[pathlib.Path]:
  """Writes the adapters in `params` to `folder` as PEFT saves a LoRA adapter.

  Args:
    model: the `CausalLM` that `add_lora` or `load_lora` adapted.
    params: its params, with the adapters.
    folder: created if missing; both files land atomically.
    base_model_name_or_path: recorded in the config (PEFT loads that base
      model when none is given); None: the config's `_name_or_path`, if any.

  Returns:
    The files written: `adapter_model.safetensors`, `adapter_config.json`.

  Raises:
    ValueError: the params hold no adapters, one the PEFT layout cannot
      name, or adapters of different ranks or alphas; or the family is GPT-2.
  """
  names = [item for item in _peft_names(model, params) if item[2].adapter_path(LORA_A) in params]
  adapted = {path for path in params if path[-1] == LORA_A}
  if not names or adapted != {site.adapter_path(LORA_A) for _, _, site in names}:
    left = sorted(path_text(path) for path in adapted - {s.adapter_path(LORA_A) for _, _, s in names})
    raise ValueError(
        f"save_lora: {'no LoRA adapters in the params' if not adapted else f'no PEFT name for {left[0]}'}"
        f" of {model.where()}; add_lora adapters to the attention projections or MLP first.")
  first = params[names[0][2].adapter_path(LORA_A)].metadata
  settings = {(params[site.adapter_path(LORA_A)].metadata.get(LORA_RANK),
               params[site.adapter_path(LORA_A)].metadata.get(LORA_ALPHA)) for _, _, site in names}
  if len(settings) != 1:
    raise ValueError(f"save_lora: the adapters of {model.where()} have several (rank, alpha):"
                     f" {sorted(settings)}; PEFT's config holds one. Merge some first.")
  pending = []
  for module, entry, site in names:
    for which, peft in ((LORA_A, "lora_A"), (LORA_B, "lora_B")):
      value = params[site.adapter_path(which)].value
      shape = value.shape[1:] if entry.layer is not None else value.shape
      flat = (shape[-1], int(np.prod(shape[:-1]))) if which == LORA_A else (int(np.prod(shape[1:])), shape[0])
      pending.append(PendingTensor(f"{_PREFIX}{module}.{peft}.weight", flat, np.dtype(value.dtype),
                                   _producer(value, entry.layer, which)))
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  # write_checkpoint names its file model.safetensors: write it aside, then
  # rename it into place (atomic, as the writer's own rename is).
  aside = pathlib.Path(tempfile.mkdtemp(dir=folder, prefix=".lora."))
  try:
    write_checkpoint(aside, pending)
    os.replace(aside / SINGLE_FILE, folder / ADAPTER_WEIGHTS)
  finally:
    shutil.rmtree(aside, ignore_errors=True)
  hf = model.architecture.hf or {}
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first[LORA_RANK],
      "lora_alpha": first[LORA_ALPHA], "lora_dropout": 0.0, "bias": "none",
      "target_modules": sorted({module.rsplit(".", 1)[-1] for module, _, _ in names}),
      "base_model_name_or_path": base_model_name_or_path or hf.get("_name_or_path"),
      "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
      "use_rslora": False, "use_dora": False, "modules_to_save": None,
  }
  return [folder / ADAPTER_WEIGHTS, write_json(folder / ADAPTER_CONFIG, config)]


def _producer(value: Any, layer: int | None, which: str) -> Callable[[], np.ndarray]:
  """PyTorch's `lora_A [r, in]` or `lora_B [out, r]` of one layer of an adapter."""

  def produce() -> np.ndarray:
    array = np.asarray(jax.device_get(value if layer is None else value[layer]))
    if which == LORA_A:
      return np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)
    return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)

  return produce


def read_adapter_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of the safetensors file at `path` (adapters are small)."""
  with open(path, "rb") as file:
    header = read_header(file, os.fstat(file.fileno()).st_size, repr(str(path)))
    file.seek(header.data_start)
    data = file.read()
  tensors = {}
  for name, entry in header.entries.items():
    if entry.code not in DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has dtype {entry.code}, which blox does"
                             " not read; save the adapter in float32, bfloat16 or float16.")
    tensors[name] = np.frombuffer(data[entry.begin:entry.end], DTYPES[entry.code]).reshape(entry.shape)
  return tensors


def load_lora(
    model: CausalLM, params: Params, folder: str | os.PathLike[str],
) -> tuple[CausalLM, Params]:
  """Adds the LoRA adapter saved in `folder` (by PEFT or `save_lora`) to a base model.

  Args:
    model: the base `CausalLM`, without adapters.
    params: its params.
    folder: holds `adapter_config.json` and `adapter_model.safetensors`.

  Returns:
    As `add_lora`: the model with its hooks and the params with the adapters
    (trainable, in the dtype of their kernels) and the base frozen.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: not a plain LoRA adapter (`use_rslora`, `use_dora`, biases,
      per-module ranks), or a tensor that names no kernel of the model, has
      the wrong shape, or adapts only some layers of the stack.
  """
  folder = pathlib.Path(folder)
  config = json.loads((folder / ADAPTER_CONFIG).read_text())
  refused = [key for key, plain in (("use_rslora", False), ("use_dora", False), ("bias", "none"),
                                    ("rank_pattern", {}), ("alpha_pattern", {}))
             if config.get(key, plain) not in (plain, None)]
  if config.get("peft_type") != "LORA" or refused:
    raise ValueError(f"load_lora: {folder / ADAPTER_CONFIG} is not a plain LoRA adapter"
                     f" (peft_type={config.get('peft_type')!r}, {refused or 'ok'}); blox loads"
                     " peft_type 'LORA' without rslora, DoRA, biases or per-module ranks.")
  tensors = read_adapter_file(folder / ADAPTER_WEIGHTS)
  by_module = {module: (entry, site) for module, entry, site in _peft_names(model, params)}
  wanted: dict[str, tuple[TensorMap, LoraSite]] = {}
  for name in tensors:
    module = name.removeprefix(_PREFIX).rsplit(".", 2)[0]
    if not name.startswith(_PREFIX) or module not in by_module:
      raise ValueError(f"load_lora: {folder / ADAPTER_WEIGHTS} holds {name!r}, which adapts no"
                       f" kernel of {model.where()}; is it an adapter of another model family?")
    wanted[module] = by_module[module]
  model, params = add_lora(model, params, targets=sorted({site.name for _, site in wanted.values()}),
                           rank=int(config["r"]), alpha=config["lora_alpha"])
  entries = params.as_dict()
  for path, values in _stacked_values(wanted, tensors, params, folder).items():
    param = entries[path]
    entries[path] = Param(jnp.asarray(values, param.value.dtype), param.trainable, param.metadata)
  return model, Params(entries, locked=True)


def _stacked_values(
    wanted: dict[str, tuple[TensorMap, LoraSite]], tensors: dict[str, np.ndarray], params: Params,
    folder: pathlib.Path,
) -> dict[Path, np.ndarray]:
  """Each adapter's value in blox's layout, its layers stacked, from PEFT's tensors."""
  values: dict[Path, np.ndarray] = {}
  filled: dict[Path, set[int | None]] = {}
  for module, (entry, site) in wanted.items():
    for which, peft in ((LORA_A, "lora_A"), (LORA_B, "lora_B")):
      path = site.adapter_path(which)
      target = params[path].value
      if path not in values:
        values[path], filled[path] = np.zeros(target.shape, np.float32), set()
      shape = target.shape[1:] if entry.layer is not None else target.shape
      name = f"{_PREFIX}{module}.{peft}.weight"
      if name not in tensors:
        raise ValueError(f"load_lora: {folder / ADAPTER_WEIGHTS} lacks {name!r}.")
      tensor = tensors[name].T
      expected = (int(np.prod(shape[:-1])), shape[-1]) if which == LORA_A else (shape[0], int(np.prod(shape[1:])))
      if tensor.shape != expected:
        raise ValueError(f"load_lora: {name!r} is {list(tensors[name].shape)}, but {_site_text(site)}"
                         f" needs {list(expected[::-1])}; is the adapter's r that of its config?")
      layer_value = tensor.reshape(shape).astype(np.float32)
      if entry.layer is None:
        values[path][...] = layer_value
      else:
        values[path][entry.layer] = layer_value
      filled[path].add(entry.layer)
  for path, layers in filled.items():
    total = params[path].value.shape[0] if None not in layers else 1
    if len(layers) != total:
      raise ValueError(f"load_lora: {folder / ADAPTER_WEIGHTS} adapts {len(layers)} of the {total}"
                       f" layers at {path_text(path)}; blox stacks one adapter per layer, so"
                       " adapt every layer (no layers_to_transform).")
  return values


def _site_text(site: LoraSite) -> str:
  return f"{site.module.where()} ({'/'.join(site.weight_name)})"
