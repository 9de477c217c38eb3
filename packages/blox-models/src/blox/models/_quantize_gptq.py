"""Calibrated rounding (GPTQ): integers whose products move least on real inputs.

Rounding each weight to its nearest level treats every weight alike. A
kernel's error, though, only matters through its outputs `x @ W` on the
inputs it will see. GPTQ (Frantar et al., 2022) rounds the input rows of
`W [in, out]` one at a time and spreads each row's rounding error over the
rows not yet rounded, weighted by the inverse of the inputs' second moment
`H = sum_x x x^T` (`[in, in]`), so that `x @ W_quantized` stays close to
`x @ W` for inputs like the calibration ones.

This module measures `H` and rounds:

- `input_hessians` runs the model on calibration batches with a contraction
  hook (`add_hook`, outermost) that sends each target kernel's inputs to the
  host (`jax.debug.callback`, ordered) and adds `x^T x` there, in float64.
  A `Repeat` stack traces its layer once and runs it once per layer, so the
  callback also sends the first values of the kernel it met, and the host
  gives the inputs to the stored layer that starts with them (by call order
  among layers that start alike). Counting calls alone would not do: under
  `vmap` the callback runs once per example.
- `gptq_array` rounds a weight, stacked or not, into the stored format of
  `_quantize_format` (the same integers and scales `quantize_array` gives),
  so nothing downstream knows which rounding made them. Two choices that
  keep that format: each group's scale is fixed before any error moves
  ("static groups": the clipping of its largest magnitude, among
  `CLIPPING`, whose rounding to nearest errs least, weighted by `H`'s
  diagonal), and the rows are rounded in order of decreasing `H` diagonal
  ("act order": the most used inputs first, while most rows are still free
  to absorb their error). `H` is damped by
  `DAMPING` times its mean diagonal, which keeps its inverse well
  conditioned; rows whose inputs were always zero are rounded as they are.

Embedding tables are not calibrated: a lookup is not a product, so there
is no `H` for it, and a tied head's `H` would trade the lookup's accuracy
for the head's.

Memory: one `[in, in]` float64 matrix per calibrated kernel and layer.

Example:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> w = rng.normal(size=(16, 4))
  >>> x = rng.normal(size=(256, 16)) * np.linspace(0.1, 3.0, 16)  # unequal inputs
  >>> q, scales = gptq_array(w, x.T @ x, bits=4, input_axes=1, group_size=8, stacked=0)
  >>> q.dtype, q.shape, scales.shape
  (dtype('int8'), (16, 4), (2, 4))
  >>> nearest = np.clip(np.round(w / np.repeat(scales, 8, axis=0)), -7, 7)
  >>> def error(integers):
  ...   return np.linalg.norm(x @ (w - integers * np.repeat(scales, 8, axis=0)))
  >>> bool(error(q) < error(nearest))
  True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

from blox.graph import Module
from blox.models._hooks import add_hook, remove_hooks
from blox.models._quantize_format import QMAX
from blox.nn import Contraction
from blox.params import STACKED, Params, path_text

__all__ = ["BLOCK", "CLIPPING", "DAMPING", "gptq_array", "input_hessians"]

Float64 = npt.NDArray[np.float64]

DAMPING = 0.1
"""Added to `H`'s diagonal, relative to its mean: GPTQ's usual 0.01 rounded
the example model's int4 kernels worse (top-1 agreement 94.8-95.0% against
95.2-95.3% with 0.1, over two calibration samples)."""

BLOCK = 128
"""Rows rounded between two updates of the rest (one matrix product each)."""

CLIPPING = tuple(1.0 - 0.02 * step for step in range(16))
"""The fractions of a group's largest magnitude tried as its top level (1.0
first: a group keeps round-to-nearest's scale unless a smaller one errs
less). Clipping a few large weights buys finer steps for the rest: +0.1 to
+0.4 points of int4 agreement on the example model."""

_CAPTURE_ORDER = -1_000_000  # outermost: the inputs as the layer gave them


def _contracted_axes(contraction: Contraction, ndim: int) -> tuple[int, ...]:
  """The axes of the inputs (of `ndim` dims) that the product contracts,
  in the order of the weight's axes."""
  equation = contraction.equation
  if equation is None or "->" not in equation:
    raise ValueError(
        f"quantize(calibration=...): {path_text(contraction.weight_path() or ())} is"
        " contracted by a convolution, which calibrated rounding does not handle.")
  operands, result = equation.split("->")
  inputs, weight = operands.split(",")
  explicit = inputs.replace("...", "")
  first = ndim - len(explicit)  # the axes '...' stands for come first
  return tuple(first + explicit.index(letter) for letter in weight
               if letter in explicit and letter not in result)


_PROBE = 16  # values of a layer's kernel sent with its inputs, to tell the layers apart


def _probe(weight: Any) -> Any:
  """The first `_PROBE` values of a weight's first row (of its last axis)."""
  return weight[(0,) * (weight.ndim - 1)][:_PROBE]


class _Accumulator:
  """`x^T x` per kernel and layer, added on the host as the callbacks arrive.

  Each callback brings the inputs and a probe of the kernel they met: the
  layer is the one whose stored kernel starts with those values. Counting
  calls would not do: under `vmap` the callback runs once per example.
  """

  def __init__(self, params: Params, paths: Iterable[tuple[str, ...]]) -> None:
    self.probes: dict[tuple[str, ...], Any] = {}
    for path in paths:
      value = params[path].value
      sizes = _sizes(params[path].metadata.get(STACKED))
      # Sliced where the kernel lives: only the probes come to the host.
      first_rows = value[(*(slice(None),) * len(sizes), *(0,) * (value.ndim - len(sizes) - 1))]
      self.probes[path] = np.asarray(first_rows[..., :_PROBE]).reshape(math.prod(sizes), -1)
    self.hessians: dict[tuple[str, ...], Float64] = {}
    self.calls: dict[tuple[str, ...], int] = dict.fromkeys(self.probes, 0)
    self.layer_calls = {path: np.zeros(len(probes), np.int64) for path, probes in self.probes.items()}
    self.unmatched: set[tuple[str, ...]] = set()

  def _layer(self, path: tuple[str, ...], probe: Any) -> int | None:
    stored = self.probes[path]
    seen = np.asarray(probe)
    # The layer may have cast its kernel to its compute dtype: compare so.
    matches = np.flatnonzero(np.all(stored.astype(seen.dtype) == seen, axis=-1))
    if len(matches) == 1:
      return int(matches[0])
    counted: int = self.calls[path] % len(stored)  # layers starting alike: by their order
    return counted if counted in matches else None

  def add(self, path: tuple[str, ...], axes: tuple[int, ...], inputs: Any, probe: Any) -> None:
    layer = self._layer(path, probe)
    self.calls[path] += 1
    if layer is None:
      self.unmatched.add(path)
      return
    x = np.asarray(inputs, np.float64)
    rest = [axis for axis in range(x.ndim) if axis not in axes]
    rows = math.prod(x.shape[axis] for axis in axes)
    flat = np.transpose(x, (*rest, *axes)).reshape(-1, rows)
    if path not in self.hessians:
      self.hessians[path] = np.zeros((len(self.probes[path]), rows, rows))
    self.hessians[path][layer] += flat.T @ flat
    self.layer_calls[path][layer] += 1


def input_hessians(
    model: Module, params: Params, calibration: Any,
    targets: Sequence[tuple[Module, tuple[str, ...], tuple[str, ...]]],
) -> dict[tuple[str, ...], Float64]:
  """`H = sum x x^T` of each target kernel's inputs over the calibration batches.

  Args:
    model: called as `model(params, batch)` on each batch.
    params: the params it runs.
    calibration: one batch (an array) or an iterable of batches.
    targets: `(module, weight name, param path)` of each kernel to measure.

  Returns:
    `{param path: H}`, `H` float64 `[*stacked sizes, in, in]` (`in` the
    product of the weight's input dims).
  """
  accumulator = _Accumulator(params, [path for _, _, path in targets])

  def capture(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    path = contraction.weight_path()
    if path in accumulator.probes:
      axes = _contracted_axes(contraction, inputs.ndim)
      jax.debug.callback(functools.partial(accumulator.add, path, axes), inputs, _probe(weight),
                         ordered=True)
    return contraction.compute(inputs, weight)

  batches: Iterable[Any] = [calibration] if hasattr(calibration, "shape") else calibration
  modules = {id(module): module for module, _, _ in targets}
  for module in modules.values():
    add_hook(module, capture, order=_CAPTURE_ORDER,
             weights=[name for other, name, _ in targets if other is module])
  try:
    forward = jax.jit(lambda params, batch: model(params, batch)[0])
    for batch in batches:
      forward(params, batch)
    jax.effects_barrier()  # type: ignore[no-untyped-call]  # jax leaves it unannotated
  finally:
    for module in modules.values():
      remove_hooks(module, order=_CAPTURE_ORDER)
  for _, _, path in targets:
    if path in accumulator.unmatched:
      raise ValueError(
          f"quantize(calibration=...): a product of {path_text(path)} ran with a kernel"
          " that is none of its stored layers' (changed inside the model?), so its inputs"
          " cannot be given to a layer; calibrate a model that multiplies by its params"
          " as stored.")
    missed = np.flatnonzero(accumulator.layer_calls[path] == 0)
    if len(missed):
      which = "" if len(accumulator.layer_calls[path]) == 1 else f" (layers {missed.tolist()})"
      raise ValueError(
          f"quantize(calibration=...): running the model on the calibration batches"
          f" contracted {path_text(path)}{which} never; give batches the model's forward"
          " pass runs every targeted kernel on, or leave that module out of targets.")
  shapes = {path: params[path].metadata.get(STACKED) for _, _, path in targets}
  return {
      path: hessian.reshape(*_sizes(shapes[path]), *hessian.shape[1:])
      for path, hessian in accumulator.hessians.items()}


def _sizes(stacked: Any) -> tuple[int, ...]:
  """The stacked layer sizes of a param's `STACKED` metadata (none if absent)."""
  return tuple(int(size) for size in stacked) if isinstance(stacked, tuple) else ()


def _group_scales(weight: Float64, importance: Float64, qmax: int, group_size: int) -> Float64:
  """Each group's scale `[groups, out]`: of `CLIPPING` fractions of its largest
  magnitude, the one whose rounding to nearest errs least, each row's squared
  error weighted by its input's `importance` (`H`'s diagonal)."""
  groups = weight.reshape(weight.shape[0] // group_size, group_size, -1)
  weights = importance.reshape(groups.shape[0], group_size, 1)
  largest = np.abs(groups).max(axis=1)
  best: Float64 = np.ones_like(largest)
  least: Float64 = np.full(largest.shape, np.inf)
  for fraction in CLIPPING:
    scale = np.where(largest > 0, fraction * largest / qmax, 1.0)
    rounded = np.clip(np.round(groups / scale[:, None]), -qmax, qmax) * scale[:, None]
    error = np.sum(weights * (rounded - groups) ** 2, axis=1)
    better = error < least
    best, least = np.where(better, scale, best), np.where(better, error, least)
  return best


def _round_rows(weight: Float64, hessian: Float64, qmax: int, group_size: int) -> tuple[Float64, Float64]:
  """GPTQ of one `[in, out]` weight: `(integers, scales [groups, out])`."""
  weight = weight.copy()
  rows = weight.shape[0]
  scales = _group_scales(weight, np.diag(hessian), qmax, group_size)
  hessian = hessian.copy()
  unused = np.diag(hessian) == 0
  hessian[unused, unused] = 1.0
  order = np.argsort(-np.diag(hessian), kind="stable")
  hessian += DAMPING * np.mean(np.diag(hessian)) * np.eye(rows)
  # The upper Cholesky factor of H^-1 (in the rounding order) gives each
  # row's error weight (its diagonal) and where the error goes (its row).
  upper = np.linalg.cholesky(np.linalg.inv(hessian[np.ix_(order, order)])).T
  permuted = weight[order]
  row_scales = scales[order // group_size]
  integers = np.zeros_like(permuted)
  for start in range(0, rows, BLOCK):
    stop = min(start + BLOCK, rows)
    errors = np.zeros((stop - start, permuted.shape[1]))
    for row in range(start, stop):
      rounded = np.clip(np.round(permuted[row] / row_scales[row]), -qmax, qmax)
      integers[row] = rounded
      error = (permuted[row] - rounded * row_scales[row]) / upper[row, row]
      permuted[row + 1:stop] -= np.outer(upper[row, row + 1:stop], error)
      errors[row - start] = error
    permuted[stop:] -= upper[start:stop, stop:].T @ errors
  unpermuted = np.empty_like(integers)
  unpermuted[order] = integers
  return unpermuted, scales


def gptq_array(
    value: Any, hessian: Any, *, bits: int, input_axes: int, group_size: int | None, stacked: int,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
  """`(integers, scales)` of a float weight rounded by GPTQ with its inputs' `hessian`.

  Args:
    value: the weight `[*stacked dims, *input dims, *output dims]`.
    hessian: `[*stacked dims, in, in]`, `in` the product of the input dims.
    bits, input_axes, group_size, stacked: as for `quantize_array`
      (`input_axes` positive: a table is not calibrated).

  Returns:
    int8 integers of `value`'s shape (unpacked) and float32 scales
    `[*stacked dims, groups, *output dims]`, as `quantize_array` lays them out.
  """
  weights = np.asarray(value, np.float64)
  lead = weights.shape[:stacked]
  inputs = weights.shape[stacked:stacked + input_axes]
  outputs = weights.shape[stacked + input_axes:]
  rows = math.prod(inputs)
  flat = weights.reshape(-1, rows, math.prod(outputs))
  hessians = np.asarray(hessian, np.float64).reshape(-1, rows, rows)
  size = rows if group_size is None else group_size
  rounded = [_round_rows(w, h, QMAX[bits], size) for w, h in zip(flat, hessians)]
  integers = np.stack([q for q, _ in rounded]).astype(np.int8).reshape(weights.shape)
  scales = np.stack([s for _, s in rounded]).astype(np.float32)
  return integers, scales.reshape(*lead, rows // size, *outputs)
