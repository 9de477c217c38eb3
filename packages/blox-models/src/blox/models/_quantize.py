"""`quantize`: weight-only int8 / int4 kernels and embedding tables, dequantized on the fly.

`model, params = quantize(model, params, bits=8 | 4, group_size=None,
targets=None)` replaces the kernels of the model's `Linear` layers and
attention projections, and the tables of its `Embed`s, by integers and
float32 scales (the format is described in `_quantize_format`):

- `<weight>`, at the kernel's own path: int8 `[.., in, out]` (8 bits), or
  uint8 bytes packing two 4-bit values along the last (output) axis, which
  is halved (4 bits). Metadata: the kernel's own (`SHARDING`, `STACKED`: a
  stack stays a stack) plus `QUANTIZED: (format, input axes)`, e.g.
  `('int4', 1)`.
- `<weight>_scale` beside it: float32 `[.., groups, *output dims]`, one scale
  per group of `group_size` input rows and output channel (one group without
  `group_size`). Its `SHARDING` names the output dims as the kernel does and
  the group axis after the kernel's first input axis (None for one group),
  so a group axis is split like the rows it scales: the number of groups
  must then divide over those mesh axes.
- An `Embed` table `[vocab, features]` is a kernel the other way round
  (the tied head contracts its last axis): metadata `QUANTIZED: (format,
  -1)`, 4 bits packed along the features, scales float32 `[vocab, groups]`
  (one row of scales per row, groups of `group_size` features), sharded
  like the table's vocabulary axis and, with several groups, its features.

Both are ordinary non-trainable params: `bx.save` / `bx.load`, orbax,
`blox.parallel.param_shardings` and `bx.summary` (with their true bytes)
take them as they are. Every param of the result is non-trainable: the base
model is frozen, as QLoRA wants it (an adapter adds its own trainable params).

How the layers read them. A layer fetches its kernel with `get_param`, which
checks the shape it expects and the layer's `param_dtype` (every pretrained
model has one), so an integer kernel would be refused and a packed one has
the wrong shape. `quantize` therefore gives each `Linear` and
`MultiHeadAttention` of the model its own `get_param` (an instance
attribute; the class is untouched) which, for a param whose metadata says
`QUANTIZED`, returns the stored integers (unpacked to int8 for 4 bits) at
the shape the layer expects and skips the dtype check; any other param goes
to the usual `get_param`. The layer casts the integers to its compute dtype
(exact: they are small) and contracts; a contraction hook
(`add_hook(module, hook, order=10)`) multiplies them by the scales it reads
from `contraction.params` before the product, so a LoRA hook (order 0)
wraps the dequantized product. Float params still run on the same model.
Only the 4-bit unpacking and one layer's float kernel exist at a time,
inside the layer (the scan of a `Repeat` gets one layer's bytes).

An `Embed` gets that `get_param` and hook too: its tied head (`attend`)
contracts the table through `blox.nn.contract`, as a `Linear` does. Its
lookup is a gather, which no hook sees: the `Embed` also gets its own
`rows` (the method `Embed.__call__` gathers through; `_quantize_embed`),
which gathers the ids' integer rows and scale rows and dequantizes only
those, never the whole table.

Not quantized: norms and biases.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.models import create
  >>> model, params = create({
  ...     'model_type': 'llama', 'vocab_size': 32, 'hidden_size': 16, 'intermediate_size': 32,
  ...     'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> ids = jnp.array([[1, 2, 3]])
  >>> logits, _ = model(params, ids)
  >>> model, quantized = quantize(model, params, bits=8)
  >>> up = quantized[('model', 'lm', 'layers', 'layer', 'mlp', 'up', 'kernel')]
  >>> up.value.dtype, up.value.shape, up.metadata['quantized']
  (dtype('int8'), (2, 16, 32), ('int8', 1))
  >>> quantized[('model', 'lm', 'embed', 'embedding_scale')].value.shape
  (32, 1)
  >>> bool(jnp.max(jnp.abs(model(quantized, ids)[0] - logits)) < 0.05)
  True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.models._hooks import add_hook
from blox.models._quantize_embed import quantized_rows
from blox.models._quantize_format import (
    QUANTIZED, dequantize, pack_int4, quantize_array, read_scales, scale_path, stored_format,
    unpack_int4,
)
from blox.models._quantize_gptq import gptq_array, input_hessians
from blox.nn import Contraction, Embed, Linear, MultiHeadAttention
from blox.params import SHARDING, STACKED, Param, Params, path_text

__all__ = ["QUANTIZED", "QUANTIZE_ORDER", "enable_quantized_weights", "quantize", "scale_path"]

QUANTIZE_ORDER = 10
"""The hook order of dequantization: inside (after) adapters such as LoRA (0)."""

_ENABLED = "_blox_models_quantized_weights"
_PROJECTIONS = ("query", "key", "value", "out")


def weights_of(module: Module) -> tuple[tuple[tuple[str, ...], int], ...]:
  """The quantizable weights of a module: `(weight name, input axes)` pairs
  (-1: the last axis is contracted, as in an embedding table)."""
  if isinstance(module, Linear):
    return ((("kernel",), 1),)
  if isinstance(module, Embed):
    return ((("embedding",), -1),)
  if isinstance(module, MultiHeadAttention):
    return tuple(((name, "kernel"), 2 if name == "out" else 1) for name in _PROJECTIONS)
  return ()


def _stored_integers(module: Module, params: Params, name: str | tuple[str, ...],
                     shape: Sequence[int] | None, fmt: tuple[str, int]) -> tuple[Any, Params]:
  """The integers of a quantized weight as one layer's int8 array of `shape`."""
  value, params = type(module).get_param(module, params, name)  # no dtype or shape check
  path = module.param_path(name)
  if fmt[0] == "int4":
    value = unpack_int4(value)
  if shape is not None and tuple(value.shape) != tuple(int(d) for d in shape):
    raise ValueError(
        f"{module.where()}: the quantized param {path_text(path)} holds a {fmt[0]}"
        f" weight of shape {tuple(value.shape)} but the layer expects {tuple(shape)};"
        " quantize the params of this model (blox.models.quantize), not another's.")
  return value, params


def _dequantizing_hook(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
  """Multiplies a quantized weight's integers (as the layer cast them) by its scales."""
  path, params = contraction.weight_path(), contraction.params
  fmt = None if path is None or params is None else stored_format(params, path)
  if fmt is None or path is None or params is None:
    return contraction.compute(inputs, weight)
  scale, _ = read_scales(params, path, fmt)
  if not jnp.issubdtype(weight.dtype, jnp.floating):
    # Attention casts its operands only when it has a compute dtype; without
    # one the integers arrive as stored and compute in the inputs' dtype.
    weight = weight.astype(inputs.dtype)
  return contraction.compute(inputs, dequantize(weight, scale, input_axes=fmt[1]))


def enable_quantized_weights(model: Module) -> Module:
  """Lets every `Linear`, `MultiHeadAttention` and `Embed` of `model` run
  quantized params (see the module docstring); float params run as before.

  `quantize` calls it; call it yourself on a new model object that is to
  run quantized params read from a checkpoint. Calling it again does nothing.

  Example:
    >>> from blox.models import create
    >>> model, params = create({'model_type': 'llama', 'vocab_size': 8, 'hidden_size': 8,
    ...     'intermediate_size': 8, 'num_hidden_layers': 1, 'num_attention_heads': 1})
    >>> enable_quantized_weights(model) is model
    True
  """
  for _, module in model.graph.walk():
    weights = weights_of(module)
    if not weights or module.__dict__.get(_ENABLED):
      continue

    def get_param(
        params: Params, name: str | tuple[str, ...], shape: Sequence[int] | None = None,
        *, _module: Module = module, **options: Any,
    ) -> tuple[Any, Params]:
      fmt = stored_format(params, _module.param_path(name))
      if fmt is None:
        return type(_module).get_param(_module, params, name, shape, **options)
      return _stored_integers(_module, params, name, shape, fmt)

    # An instance attribute shadows the class's method for this module only.
    module.__dict__["get_param"] = get_param
    if isinstance(module, Embed):
      module.__dict__["rows"] = quantized_rows(module)  # its lookup, a gather
    module.__dict__[_ENABLED] = True
    add_hook(module, _dequantizing_hook, order=QUANTIZE_ORDER, weights=[name for name, _ in weights])
  return model


def _targets(model: Module, targets: str | None) -> list[Module]:
  """The modules to quantize, checked; `targets` searches slash-joined paths."""
  pattern = None if targets is None else re.compile(targets)
  found = [
      module for path, module in model.graph.walk()
      if weights_of(module) and (pattern is None or pattern.search("/".join(path)))]
  if not found:
    embeds = [
        "/".join(path) for path, module in model.graph.walk()
        if pattern is not None and pattern.search("/".join(path)) and not weights_of(module)]
    matched = f" (it matches only {embeds}, which have no quantizable kernel)" if embeds else ""
    raise ValueError(
        f"quantize: targets={targets!r} matches no Linear, MultiHeadAttention or Embed module"
        f" of {model.where()}{matched}. Give a regular expression searched in module paths"
        " such as 'layers/layer/mlp' or 'lm/embed'.")
  return found


# One compiled program per weight shape: run op by op, the dozen small ops
# of each weight would compile one by one (seconds for a small model).
_quantize_array = jax.jit(quantize_array, static_argnames=("bits", "input_axes", "group_size", "stacked"))


def _check_options(bits: int, group_size: int | None) -> None:
  if bits not in (8, 4):
    raise ValueError(f"quantize: bits must be 8 or 4, got {bits!r}.")
  if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
    raise ValueError(f"quantize: group_size must be a positive int or None, got {group_size!r}.")
  if bits == 4 and group_size is None:
    raise ValueError(
        "quantize: bits=4 needs a group_size (e.g. 64): one 4-bit scale per whole"
        " output channel loses too much accuracy.")


def _checked(
    path: tuple[str, ...], param: Param, *, bits: int, group_size: int | None, input_axes: int,
) -> int:
  """Checks that `param` can be quantized so; returns its number of stacked dims."""
  if QUANTIZED in param.metadata:
    raise ValueError(
        f"quantize: {path_text(path)} is already quantized ({param.metadata[QUANTIZED]!r});"
        " quantize the float params once (quantizing twice would only lose accuracy).")
  value = param.value
  if not jnp.issubdtype(value.dtype, jnp.floating):
    raise TypeError(f"quantize: {path_text(path)} is {value.dtype}, not a float kernel.")
  sizes = param.metadata.get(STACKED)
  stacked = len(sizes) if isinstance(sizes, tuple) else 0
  if input_axes < 0:
    inputs = value.shape[value.ndim + input_axes:]
  else:
    inputs = value.shape[stacked:stacked + input_axes]
  rows = math.prod(inputs)
  if group_size is not None and rows % group_size:
    raise ValueError(
        f"quantize: group_size={group_size} does not divide the {rows} input rows of"
        f" {path_text(path)} (shape {tuple(value.shape)}); pick a divisor of {rows}.")
  if bits == 4 and value.shape[-1] % 2:
    raise ValueError(
        f"quantize: bits=4 packs two values per byte along the last axis of"
        f" {path_text(path)}, whose size {value.shape[-1]} is odd; quantize it with"
        " bits=8 (leave it out of targets here).")
  return stacked


def _quantized_entries(
    param: Param, *, bits: int, group_size: int | None, input_axes: int, stacked: int,
    hessian: Any = None,
) -> tuple[Param, Param]:
  """The quantized weight and its scales from one float kernel that `_checked`
  passed (rounded by GPTQ with its inputs' `hessian` if given, else to nearest)."""
  value = param.value
  if hessian is None:
    integers, scales = _quantize_array(
        value, bits=bits, input_axes=input_axes, group_size=group_size, stacked=stacked)
  else:
    rounded, found = gptq_array(
        value, hessian, bits=bits, input_axes=input_axes, group_size=group_size, stacked=stacked)
    integers = pack_int4(jnp.asarray(rounded)) if bits == 4 else jnp.asarray(rounded)
    scales = jnp.asarray(found)
  metadata = dict(param.metadata)
  sharding = metadata.get(SHARDING)
  scale_metadata = {key: item for key, item in metadata.items() if key != SHARDING}
  if isinstance(sharding, tuple) and len(sharding) == value.ndim - stacked and input_axes < 0:
    # [*outputs, groups]: the groups split like the first input (features) axis.
    first_input = len(sharding) + input_axes
    groups = scales.shape[-1]
    scale_metadata[SHARDING] = (*sharding[:first_input],
                                sharding[first_input] if groups > 1 else None)
  elif isinstance(sharding, tuple) and len(sharding) == value.ndim - stacked:
    groups = scales.shape[stacked]
    scale_metadata[SHARDING] = (sharding[0] if groups > 1 else None, *sharding[input_axes:])
  scale_metadata[QUANTIZED] = "scale"
  metadata[QUANTIZED] = (f"int{bits}", input_axes)
  return Param(integers, False, metadata), Param(scales, False, scale_metadata)


def quantize(
    model: Module, params: Params, *, bits: int = 8, group_size: int | None = None,
    targets: str | None = None, calibration: Any = None,
) -> tuple[Module, Params]:
  """Weight-only quantization of `model`'s `Linear` and attention kernels
  and `Embed` tables.

  Args:
    model: the model (a `CausalLM` or any module); its `Linear`,
      `MultiHeadAttention` and `Embed` modules learn to run quantized params
      (`enable_quantized_weights`), in place.
    params: its float params (all kernels and tables present).
    bits: 8 (int8) or 4 (two values per byte).
    group_size: input rows per scale (features per scale in an embedding
      table's row); None (8 bits only): one scale per output channel (per
      table row). 4 bits needs one, e.g. 64.
    targets: a regular expression searched in the slash-joined module paths
      (e.g. `'layers/layer/mlp'`, `'lm/embed'`); None: every Linear,
      attention and Embed module.
    calibration: None to round every weight to its nearest level; or model
      inputs, one batch (e.g. token ids `[batch, length]`) or an iterable of
      batches, that the model runs on (`model(params, batch)`) to measure
      the inputs each kernel sees: the kernels are then rounded by GPTQ
      (`_quantize_gptq`), which keeps their products on such inputs closer
      to the float ones. Same stored format; embedding tables are rounded
      to nearest either way. Give text like what the model will read (a
      few hundred sequences of training data).

  Returns:
    `(model, params)`: the same model, and params whose target kernels and
    tables are integers with `<name>_scale` beside them, every param
    non-trainable.

  Raises:
    ValueError: bits other than 8 and 4, a group_size that does not divide a
      kernel's input rows, targets matching no module, a kernel already
      quantized, a kernel missing from params, or a targeted kernel that
      the calibration batches never reach.

  Example:
    >>> from blox.models import create
    >>> model, params = create({'model_type': 'llama', 'vocab_size': 8, 'hidden_size': 8,
    ...     'intermediate_size': 16, 'num_hidden_layers': 1, 'num_attention_heads': 1})
    >>> model, q = quantize(model, params, bits=4, group_size=8, targets='mlp/down')
    >>> down = ('model', 'lm', 'layers', 'layer', 'mlp', 'down')
    >>> q[down + ('kernel',)].value.shape, q[down + ('kernel_scale',)].value.shape
    ((1, 16, 4), (1, 2, 8))
  """
  _check_options(bits, group_size)
  # Every weight is checked before any work: calibration runs the model.
  weights: list[tuple[Module, tuple[str, ...], tuple[str, ...], int, int]] = []
  for module in _targets(model, targets):
    for name, input_axes in weights_of(module):
      path = module.param_path(name)
      if path not in params:
        raise ValueError(
            f"quantize: {module.where()} has no param {path_text(path)}; run the model once"
            " (or load its checkpoint) so that its params exist, then quantize them.")
      stacked = _checked(path, params[path], bits=bits, group_size=group_size,
                         input_axes=input_axes)
      weights.append((module, name, path, input_axes, stacked))
  hessians: dict[tuple[str, ...], Any] = {}
  if calibration is not None:
    hessians = input_hessians(model, params, calibration, [
        (module, name, path) for module, name, path, input_axes, _ in weights if input_axes > 0])
  replaced = {
      path: _quantized_entries(
          params[path], bits=bits, group_size=group_size, input_axes=input_axes,
          stacked=stacked, hessian=hessians.get(path))
      for _, _, path, input_axes, stacked in weights}
  entries: dict[tuple[str, ...], Param] = {}
  for path, param in params.items():
    if path in replaced:
      entries[path], entries[scale_path(path)] = replaced[path]
    else:
      entries[path] = param.replace(trainable=False)
  return enable_quantized_weights(model), Params(entries, locked=params.is_locked)
