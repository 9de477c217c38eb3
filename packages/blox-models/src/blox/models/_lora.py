"""LoRA: trainable low-rank adapters beside a model's frozen kernels.

`add_lora(model, params, targets=..., rank=..., alpha=...)` finds the
kernels whose module path matches `targets`, adds two adapters beside each
(`lora_a`, `lora_b`, next to the kernel's own name) and a contraction hook
that computes `x W + (alpha / rank) * (x A) B`. Every param that was
trainable becomes non-trainable (and remembers it, in its metadata), the
adapters are trainable: `params.split()` and `bx.value_and_grad` then give
gradients and optimizer state for the adapters only. `merge_lora` folds
`W + scale * A B` back into the kernels and restores the base model.

Where adapters live, for a kernel of shape `[in..., out...]` (the axes the
inputs contract, then the others):

    Linear 'm/lm/mlp/up'   kernel       [in, out]  lora_a [in, r]  lora_b [r, out]
    MultiHeadAttention 'm/attention'
                           query/kernel [E, H, D]  query/lora_a [E, r]  query/lora_b [r, H, D]
                           out/kernel   [H, D, E]  out/lora_a [H, D, r]  out/lora_b [r, E]
    Conv 'm/conv'          kernel [*window, in, out]: lora_a [*window, in, r] (a
                           convolution to r channels), lora_b [r, out] (a 1x1 one)

In a `Repeat` stack the adapters are stacked like the layer's own params
(leading `[num_layers]`, metadata `STACKED: (num_layers,)`). A starts
uniform in `±1/sqrt(fan_in)` (PEFT's Kaiming-uniform), B at zero, so the
adapted model first computes exactly what the base computes.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.models import create
  >>> model, params = create({
  ...     'model_type': 'llama', 'vocab_size': 32, 'hidden_size': 16, 'intermediate_size': 32,
  ...     'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> ids = jnp.array([[1, 2, 3]])
  >>> base_logits, _ = model(params, ids)
  >>> model, adapted = add_lora(model, params, targets=r'.*(query|value)', rank=4, alpha=8)
  >>> adapted[('model', 'lm', 'layers', 'layer', 'attention', 'query', 'lora_a')].value.shape
  (2, 16, 4)
  >>> bool((model(adapted, ids)[0] == base_logits).all())
  True
  >>> sorted(path[-2] for path in adapted.split()[0])
  ['query', 'query', 'value', 'value']
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.models._hooks import add_hook, hooks_of, remove_hooks
from blox.models._quantize_format import float_shape
from blox.nn import Contraction, Conv, Linear, MultiHeadAttention
from blox.params import SHARDING, STACKED, Param, Params, Path, path_text

__all__ = [
    "FROZEN_BY_LORA", "LORA_ALPHA", "LORA_A", "LORA_B", "LORA_ORDER", "LORA_RANK", "LoraSite",
    "add_lora", "lora_sites", "merge_lora",
]

LORA_A, LORA_B = "lora_a", "lora_b"
# Metadata: the adapters' alpha and rank (merge_lora and save_lora read the
# scale from the params), and the mark of a param add_lora made non-trainable.
LORA_ALPHA, LORA_RANK, FROZEN_BY_LORA = "lora_alpha", "lora_rank", "frozen_by_lora"
# The outermost hook: the adapter adds its path around whatever computes the
# base product (a quantized kernel's hook, order 10, dequantizes it).
LORA_ORDER = 0
_PROJECTIONS = ("query", "key", "value", "out")
ModuleT = TypeVar("ModuleT", bound=Module)


@dataclasses.dataclass(frozen=True)
class LoraSite:
  """One kernel that can take an adapter.

  Attributes:
    module: the layer that owns the kernel.
    weight_name: the kernel's name under the module, e.g. `('query', 'kernel')`.
    name: what `targets` is matched against: the module path `a/b/c`, with
      '/' and the projection for attention (`a/b/attention/query`).
    in_axes: how many leading axes of the kernel the inputs contract (-1:
      all but the last, a convolution's window and input channels).
  """

  module: Module
  weight_name: tuple[str, ...]
  name: str
  in_axes: int

  def kernel_path(self) -> Path:
    return self.module.param_path(self.weight_name)

  def adapter_path(self, which: str) -> Path:
    """The path of `lora_a` or `lora_b`, beside the kernel."""
    return self.module.param_path((*self.weight_name[:-1], which))


def lora_sites(model: Module, params: Params) -> list[LoraSite]:
  """Every kernel of `model` (its graph's modules) in `params` that LoRA supports."""
  sites = []
  for path, module in model.graph.walk():
    where = "/".join(path)
    if isinstance(module, MultiHeadAttention):
      for name in _PROJECTIONS:
        sites.append(LoraSite(module, (name, "kernel"), f"{where}/{name}", 2 if name == "out" else 1))
    elif isinstance(module, Linear):
      sites.append(LoraSite(module, ("kernel",), where, 1))
    elif isinstance(module, Conv) and module.feature_group_count == 1:
      sites.append(LoraSite(module, ("kernel",), where, -1))
  return [site for site in sites if site.kernel_path() in params]


def _matches(targets: str | Sequence[str], name: str) -> bool:
  if isinstance(targets, str):
    return re.fullmatch(targets, name) is not None
  return any(name == target or name.endswith("/" + target) for target in targets)


def add_lora(
    model: ModuleT, params: Params, *, targets: str | Sequence[str], rank: int, alpha: float,
    seed: int = 0, param_dtype: Any = None,
) -> tuple[ModuleT, Params]:
  """Adds trainable LoRA adapters beside the kernels `targets` names.

  Args:
    model: any blox module (a `CausalLM`, ...); its `Linear`s, the four
      projections of its `MultiHeadAttention`s and its `Conv`s (without
      feature groups) can take adapters, also inside `Repeat` stacks.
    params: the model's params.
    targets: a regular expression that must match a site's whole name
      (`re.fullmatch`, as PEFT does with a string): the module path
      `a/b/c` of a Linear or Conv, or the attention's path + '/' + the
      projection (`query`, `key`, `value`, `out`). PEFT's
      `r'.*(query|value)'` thus adapts the query and value projections.
      Or a list of names, each matching a site named so or ending in
      '/' + the name (`['query', 'mlp/up']`).
    rank: the adapters' rank r.
    alpha: the low-rank path is scaled by `alpha / rank`.
    seed: draws the A adapters.
    param_dtype: the adapters' dtype; None: each kernel's (float32 for a
      kernel that is not floating point, e.g. quantized).

  Returns:
    The same model object (with its hooks installed) and new locked params:
    the adapters trainable, every other param non-trainable.

  Raises:
    ValueError: the model already has adapters, `targets` names no kernel,
      or `rank`/`alpha` are not positive.
  """
  if not isinstance(rank, int) or rank <= 0 or not alpha > 0:
    raise ValueError(f"add_lora: rank must be a positive int and alpha positive; got rank={rank!r},"
                     f" alpha={alpha!r}.")
  sites = lora_sites(model, params)
  present = [path_text(path) for path in params if path[-1] in (LORA_A, LORA_B)]
  hooked = [site.module.where() for site in sites if _has_lora_hook(site.module)]
  if present or hooked:
    raise ValueError(
        f"add_lora: {model.where()} already has LoRA adapters ({(present or hooked)[0]}, ...);"
        " call merge_lora(model, params) first, or keep training the adapters it has.")
  chosen = [site for site in sites if _matches(targets, site.name)]
  if not chosen:
    names = ", ".join(repr(site.name) for site in sites[:6]) or "none"
    raise ValueError(
        f"add_lora: targets={targets!r} matches no kernel of {model.where()} (matched with"
        f" re.fullmatch against the site names, e.g. {names}); write e.g. r'.*(query|value)'.")
  entries: dict[Path, Param] = {}
  for path, param in params.items():
    if param.trainable:
      param = param.replace(trainable=False, metadata={**param.metadata, FROZEN_BY_LORA: True})
    entries[path] = param
  key = jax.random.key(seed)
  scale = alpha / rank
  for index, site in enumerate(chosen):
    kernel = params[site.kernel_path()]
    a, b = _new_adapters(site, kernel, rank, alpha, jax.random.fold_in(key, index), param_dtype)
    entries[site.adapter_path(LORA_A)], entries[site.adapter_path(LORA_B)] = a, b
    add_hook(site.module, _hook(site, scale), order=LORA_ORDER, weights=[site.weight_name])
  return model, Params(entries, locked=True)


def _has_lora_hook(module: Module) -> bool:
  chain = hooks_of(module)
  return chain is not None and any(order == LORA_ORDER for order, _, _ in chain.entries)


def _split_shape(site: LoraSite, kernel: Param) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """The kernel's (stacked, in, out) axes."""
  sizes: Any = kernel.metadata.get(STACKED, ())
  stacked = tuple(int(size) for size in sizes)
  # A quantized int4 kernel packs its last axis: the adapters follow the float one.
  shape = float_shape(kernel)[len(stacked):]
  cut = len(shape) - 1 if site.in_axes < 0 else site.in_axes
  return stacked, shape[:cut], shape[cut:]


def _new_adapters(
    site: LoraSite, kernel: Param, rank: int, alpha: float, key: jax.Array, param_dtype: Any,
) -> tuple[Param, Param]:
  stacked, ins, outs = _split_shape(site, kernel)
  dtype = param_dtype
  if dtype is None:
    dtype = kernel.value.dtype if jnp.issubdtype(kernel.value.dtype, jnp.floating) else jnp.float32
  bound = 1.0 / math.sqrt(math.prod(ins))
  a = jax.random.uniform(key, (*stacked, *ins, rank), jnp.float32, -bound, bound).astype(dtype)
  b = jnp.zeros((*stacked, rank, *outs), dtype)
  common: dict[str, Any] = {LORA_ALPHA: alpha, LORA_RANK: rank}
  if stacked:
    common[STACKED] = stacked
  a_meta, b_meta = dict(common), dict(common)
  names = tuple(kernel.sharding)
  if len(names) == len(ins) + len(outs):
    # Each adapter keeps the kernel's logical axes; the rank axis is whole.
    a_meta[SHARDING] = (*names[:len(ins)], None)
    b_meta[SHARDING] = (None, *names[len(ins):])
  return Param(a, True, a_meta), Param(b, True, b_meta)


def _hook(site: LoraSite, scale: float) -> Any:
  """The contraction hook of one site: the base product plus the low-rank path."""

  def lora(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    outputs = contraction.compute(inputs, weight)
    a, b = (_adapter(contraction, site.adapter_path(which)) for which in (LORA_A, LORA_B))
    a, b = a.astype(inputs.dtype), b.astype(inputs.dtype)
    if contraction.conv is not None:
      conv = contraction.conv
      low = jax.lax.conv_general_dilated(
          inputs, a, conv.strides, conv.padding, lhs_dilation=conv.input_dilation,
          rhs_dilation=conv.kernel_dilation, dimension_numbers=conv.dimension_numbers(),
          precision=contraction.precision)
      low = jnp.einsum("...r,ro->...o", low, b, precision=contraction.precision)
    else:
      assert contraction.equation is not None  # an einsum when not a convolution
      first, second = _low_rank_equations(contraction.equation, site)
      low = jnp.einsum(first, inputs, a, precision=contraction.precision)
      low = jnp.einsum(second, low, b, precision=contraction.precision)
    return outputs + (scale * low).astype(outputs.dtype)

  return lora


def _adapter(contraction: Contraction, path: Path) -> jax.Array:
  params = contraction.params
  if params is None or path not in params:
    where = contraction.module.where() if contraction.module is not None else "contract"
    raise ValueError(
        f"{where}: the LoRA adapter {path_text(path)} is not in the params it was called with;"
        " pass the params add_lora (or load_lora) returned, or merge_lora the model first.")
  value: jax.Array = params[path].value
  return value


def _low_rank_equations(equation: str, site: LoraSite) -> tuple[str, str]:
  """`x A` and `(x A) B` for the kernel product `equation` (e.g. '...i,ihd->...hd')."""
  operands, result = equation.split("->")
  inputs, kernel = operands.split(",")
  contracted = "".join(letter for letter in kernel if letter in inputs)
  if kernel[:len(contracted)] != contracted:
    raise ValueError(f"{site.module.where()}: LoRA cannot split the kernel of {equation!r} into"
                     " contracted and output axes; leave this module out of `targets`.")
  rank = next(letter for letter in "rRzZyYqQ" if letter not in equation)
  low = "".join(letter for letter in inputs if letter not in contracted) + rank
  return (f"{inputs},{contracted}{rank}->{low}",
          f"{low},{rank}{kernel[len(contracted):]}->{result}")


def merge_lora(model: ModuleT, params: Params) -> tuple[ModuleT, Params]:
  """Folds every adapter into its kernel (`W + alpha / rank * A B`) and removes them.

  The hooks go too, and every param add_lora made non-trainable is trainable
  again (add_lora marked it `frozen_by_lora` in its metadata); the result
  has the base model's structure, so `save_pretrained` exports it.

  Example:
    >>> from blox.models import create
    >>> model, params = create({'model_type': 'qwen2', 'vocab_size': 16, 'hidden_size': 8,
    ...     'intermediate_size': 16, 'num_hidden_layers': 1, 'num_attention_heads': 2,
    ...     'num_key_value_heads': 1})
    >>> model, adapted = add_lora(model, params, targets=['up'], rank=2, alpha=2)
    >>> model, merged = merge_lora(model, adapted)
    >>> list(merged) == list(params), all(p.trainable for p in merged.values())
    (True, True)

  Raises:
    ValueError: the params hold no adapters of `model`, or a kernel that is
      not floating point (dequantize it first).
  """
  sites = [site for site in lora_sites(model, params) if site.adapter_path(LORA_A) in params]
  if not sites:
    raise ValueError(f"merge_lora: the params hold no LoRA adapters of {model.where()}; call"
                     " add_lora or load_lora first.")
  entries = {path: param for path, param in params.items()}
  for site in sites:
    kernel = entries[site.kernel_path()]
    if not jnp.issubdtype(kernel.value.dtype, jnp.floating):
      raise ValueError(f"merge_lora: {path_text(site.kernel_path())} is {kernel.value.dtype}, not"
                       " floating point; dequantize the model before merging the adapters.")
    a, b = entries.pop(site.adapter_path(LORA_A)), entries.pop(site.adapter_path(LORA_B))
    stacked, ins, outs = _split_shape(site, kernel)
    rank = a.value.shape[-1]
    delta = jnp.matmul(a.value.reshape(*stacked, math.prod(ins), rank).astype(jnp.float32),
                       b.value.reshape(*stacked, rank, math.prod(outs)).astype(jnp.float32))
    alpha: Any = a.metadata[LORA_ALPHA]
    scale = alpha / int(rank)
    merged = kernel.value.astype(jnp.float32) + scale * delta.reshape(kernel.value.shape)
    entries[site.kernel_path()] = kernel.replace(value=merged.astype(kernel.value.dtype))
  for path, param in list(entries.items()):
    if param.metadata.get(FROZEN_BY_LORA):
      kept = {key: value for key, value in param.metadata.items() if key != FROZEN_BY_LORA}
      entries[path] = param.replace(trainable=True, metadata=kept)
  for _, module in model.graph.walk():
    remove_hooks(module, order=LORA_ORDER)
  return model, Params(entries, locked=True)
