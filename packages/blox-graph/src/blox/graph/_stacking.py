"""Stacked params: the `STACKED` metadata of a layer stack, and its per-layer view.

`blox.graph.Repeat` stores the params of its repeated layer once, each value
stacked along new leading axes, with metadata `STACKED: (num_layers,)` (a
stack inside a stack: `(outer, inner)`). This module holds the metadata
arithmetic and the two conversions between that form and one path per layer:
`unstack_params` (`(*repeat, 'layer', ...)` becomes `(*repeat, '<i>', ...)`
for every layer `i`, values sliced, the first stacked size dropped) and
`stack_params`, its exact inverse.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import STACKED, Param, Params
  >>> params = Params({('net', 'layer', 'w'): Param(jnp.arange(6.0).reshape(3, 2),
  ...                                               metadata={STACKED: (3,)})})
  >>> per_layer = unstack_params(params, ('net',), 3, "Repeat 'net'")
  >>> list(per_layer), per_layer[('net', '2', 'w')].value.tolist()
  ([('net', '0', 'w'), ('net', '1', 'w'), ('net', '2', 'w')], [4.0, 5.0])
  >>> stack_params(per_layer, ('net',), 3, "Repeat 'net'")[('net', 'layer', 'w')]
  Param(float32[3, 2], metadata={'stacked': (3,)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.params import FROZEN_LAYERS, STACKED, Metadata, Param, Params, Path, path_text

__all__ = [
    "LAYER",
    "abstract_array",
    "add_stacked",
    "check_stacked",
    "drop_stacked",
    "layer_view",
    "stack_params",
    "stacked_sizes",
    "unstack_params",
]

# jax.ShapeDtypeStruct's constructor has no annotations; calling it through a
# typed name keeps mypy's strict untyped-call check on everywhere else.
abstract_array: Callable[..., jax.ShapeDtypeStruct] = jax.ShapeDtypeStruct

# The name of the node a Repeat builds its layer on (`graph.child(LAYER)`).
LAYER = "layer"


def stacked_sizes(metadata: Mapping[str, Any]) -> tuple[int, ...]:
  """The sizes of a param's leading stacked axes (`()` when not stacked)."""
  sizes = metadata.get(STACKED, ())
  return tuple(sizes) if isinstance(sizes, tuple) else ()


def add_stacked(metadata: Mapping[str, Any], size: int) -> Metadata:
  """`metadata` with one more, outermost, stacked axis of `size`."""
  return Metadata({**metadata, STACKED: (size, *stacked_sizes(metadata))})


def drop_stacked(metadata: Mapping[str, Any]) -> Metadata:
  """`metadata` as one layer sees it: the outermost stacked size dropped,
  and the `STACKED` entry removed once no stacked axis is left. The frozen
  layers (`FROZEN_LAYERS`) index that outermost axis, so a layer's view has
  none."""
  rest = stacked_sizes(metadata)[1:]
  entries = {
      key: value for key, value in metadata.items() if key not in (STACKED, FROZEN_LAYERS)
  }
  if rest:
    entries[STACKED] = rest
  return Metadata(entries)


def _slice(value: Any, index: int) -> Any:
  if isinstance(value, jax.ShapeDtypeStruct):
    return abstract_array(value.shape[1:], value.dtype)
  return value[index]


def _stack(values: list[Any]) -> Any:
  first = values[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return abstract_array((len(values), *first.shape), first.dtype)
  return jnp.stack(values)


def check_stacked(path: Path, param: Param, num_layers: int, where: str) -> None:
  sizes = stacked_sizes(param.metadata)
  shape = tuple(getattr(param.value, "shape", ()))
  if not sizes or sizes[0] != num_layers or not shape or shape[0] != num_layers:
    raise ValueError(
        f"{where}: param {path_text(path)} belongs to the repeated layer but is not"
        f" stacked for {num_layers} layers (its {STACKED!r} metadata is"
        f" {param.metadata.get(STACKED)!r}, its shape {shape}). The repeat stores"
        " its layer's params stacked on a leading axis of size num_layers:"
        " create them through the repeat (call it with unlocked params that lack"
        " them), or build them from per-layer params with repeat.stack(params)."
    )


def unstack_params(params: Params, repeat_path: Path, num_layers: int, where: str) -> Params:
  """One path per layer: `(*repeat_path, 'layer', ...)` becomes
  `(*repeat_path, str(i), ...)` for each layer `i` (see `Repeat.unstack`).

  The per-layer entries take the place of the first stacked one, layer by
  layer (layer 0's params, then layer 1's, ...); other params keep their
  places. The result is built afresh, so its ranks are 0..n-1 in that order.
  """
  prefix = (*repeat_path, LAYER)
  stacked = [(path, param) for path, param in params.items() if path[: len(prefix)] == prefix]
  for path, param in stacked:
    check_stacked(path, param, num_layers, where)
  entries: dict[Path, Param] = {}
  for path, param in params.items():
    if path[: len(prefix)] != prefix:
      entries[path] = param
    elif path == stacked[0][0]:
      for index in range(num_layers):
        for inner, item in stacked:
          new_path = (*repeat_path, str(index), *inner[len(prefix):])
          if new_path in params:
            raise ValueError(
                f"{where}: cannot unstack, the params already hold a param at"
                f" {path_text(new_path)}, where layer {index}'s"
                f" {path_text(inner)} would go."
            )
          entries[new_path] = Param(
              _slice(item.value, index), item.trainable, drop_stacked(item.metadata)
          )
  return Params(entries, locked=params.is_locked)


def _layer_index(path: Path, repeat_path: Path, num_layers: int) -> int | None:
  if len(path) <= len(repeat_path) + 1 or path[: len(repeat_path)] != repeat_path:
    return None
  part = path[len(repeat_path)]
  if part.isdigit() and str(int(part)) == part and int(part) < num_layers:
    return int(part)
  return None


def stack_params(params: Params, repeat_path: Path, num_layers: int, where: str) -> Params:
  """The inverse of `unstack_params` (see `Repeat.stack`).

  Every layer must hold the same params, in the same order, with the same
  shapes, dtypes, trainable flags and metadata. The stacked entries take the
  place of layer 0's first one; the result is built afresh (ranks 0..n-1).
  """
  prefix = (*repeat_path, LAYER)
  layers: list[list[tuple[Path, Param]]] = [[] for _ in range(num_layers)]
  for path, param in params.items():
    if path[: len(prefix)] == prefix:
      raise ValueError(
          f"{where}: cannot stack, the params already hold the stacked param"
          f" {path_text(path)}; stack params that hold one path per layer, as"
          " repeat.unstack(params) gives them."
      )
    index = _layer_index(path, repeat_path, num_layers)
    if index is not None:
      layers[index].append((path[len(repeat_path) + 1 :], param))
  if not any(layers):
    return params
  reference = layers[0]
  for index, layer in enumerate(layers):
    _check_same_layer(reference, layer, index, repeat_path, where)
  first = (*repeat_path, "0", *reference[0][0]) if reference else None
  entries: dict[Path, Param] = {}
  for path, param in params.items():
    if _layer_index(path, repeat_path, num_layers) is None:
      entries[path] = param
    elif path == first:
      for position, (inner, item) in enumerate(reference):
        entries[(*prefix, *inner)] = Param(
            _stack([layer[position][1].value for layer in layers]),
            item.trainable,
            add_stacked(item.metadata, num_layers),
        )
  return Params(entries, locked=params.is_locked)


def _check_same_layer(
    reference: list[tuple[Path, Param]],
    layer: list[tuple[Path, Param]],
    index: int,
    repeat_path: Path,
    where: str,
) -> None:
  """Raises unless layer `index` holds what layer 0 holds, in the same order."""
  names = [inner for inner, _ in reference]
  if [inner for inner, _ in layer] != names:
    raise ValueError(
        f"{where}: cannot stack, layer {index} holds the params"
        f" {[inner for inner, _ in layer]} below {path_text((*repeat_path, str(index)))},"
        f" but layer 0 holds {names}; every layer must hold the same params in"
        " the same order."
    )
  for (inner, ref), (_, param) in zip(reference, layer):
    ref_kind = (tuple(ref.value.shape), ref.value.dtype, ref.trainable, ref.metadata)
    kind = (tuple(param.value.shape), param.value.dtype, param.trainable, param.metadata)
    if kind != ref_kind:
      raise ValueError(
          f"{where}: cannot stack {path_text((*repeat_path, str(index), *inner))}:"
          f" it has (shape, dtype, trainable, metadata) {kind}, but layer 0's has"
          f" {ref_kind}; every layer's params must agree in all of them."
      )


def layer_view(stacked: Params) -> Params:
  """The stacked params as one layer sees them: values one layer's shape,
  the outermost `STACKED` size dropped; ranks kept, so that merging the view
  with the other params gives back their order."""
  view = stacked.unlocked()
  for path, param in stacked.items():
    value = param.value
    view[path] = Param(
        abstract_array(tuple(value.shape[1:]), value.dtype),
        param.trainable,
        drop_stacked(param.metadata),
    )
  return view.locked() if stacked.is_locked else view
