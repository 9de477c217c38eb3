"""`Params.freeze` and `Params.unfreeze`: trainable flags by path, whole params or layers.

Without `layers`, the params `where` selects (see `blox.params._where`)
become non-trainable (`freeze`) or trainable (`unfreeze`) as a whole;
either clears any frozen layers they recorded. `unfreeze` leaves integer,
bool and PRNG key params (counters, seeds: they have no gradient) as they
are, so `unfreeze('.*')` unfreezes every weight and no random stream.

With `layers`, every selected param must be stacked (metadata `STACKED`,
from `blox.graph.Repeat`), and the layers are indices along its outermost
stacked axis (negative ones count from the end). Its trainable flag covers
all layers, so it stays as it is (trainable): the frozen layers are
recorded in its metadata under `FROZEN_LAYERS` instead, where
`value_and_grad` and `restore_frozen_layers` read them. A param frozen as a
whole counts as all its layers frozen: freezing layers of it changes
nothing, and unfreezing some makes it trainable with the others frozen.

Freezing changes the static structure, so a jitted step compiles once more.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import STACKED, Param, Params
  >>> params = Params({
  ...     ('net', 'stack', 'w'): Param(jnp.ones((4, 2)), metadata={STACKED: (4,)}),
  ...     ('net', 'out', 'w'): Param(jnp.ones(2)),
  ... })
  >>> frozen = freeze(params, 'net/out/.*')
  >>> [param.trainable for param in frozen.values()]
  [True, False]
  >>> freeze(frozen, 'net/stack/w', layers=[0, -1])[('net', 'stack', 'w')].metadata['frozen_layers']
  (0, 3)
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from blox.params._dtypes import is_inexact_dtype
from blox.params._metadata import EMPTY_METADATA, FROZEN_LAYERS, STACKED, Metadata
from blox.params._paths import Path, path_text
from blox.params._structure import Structure
from blox.params._where import Where, selected_positions

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["freeze", "frozen_layers", "stack_size", "unfreeze"]


def frozen_layers(metadata: Mapping[str, Any]) -> tuple[int, ...]:
  """The frozen layer indices a param's metadata records (`()` for none).

  Example:
    >>> frozen_layers({'frozen_layers': (0, 2)}), frozen_layers({})
    ((0, 2), ())
  """
  layers = metadata.get(FROZEN_LAYERS, ())
  return tuple(layers) if isinstance(layers, tuple) else ()


def freeze(params: Params, where: Where, *, layers: Iterable[int] | None = None) -> Params:
  """Returns params with the params `where` selects frozen (not trainable).

  Args:
    where: a regular expression matched against the whole slash-joined path
      (`'net/mlp/kernel'`, `'net/mlp/.*'`, `'.*/bias'`), or a predicate
      `where(path, param) -> bool`.
    layers: None to freeze whole params; or indices of layers to freeze in
      stacked params (`blox.graph.Repeat`), which stay trainable and record
      the frozen layers in their metadata under `FROZEN_LAYERS`; then use
      `restore_frozen_layers` after each optimizer step (see
      `blox.params._frozen_layers`).

  Returns:
    New params: values, order, ranks and lock state kept; only trainable
    flags and the `FROZEN_LAYERS` metadata change.

  Raises:
    ValueError: `where` selects no param (the message names the pattern and
      some paths); with `layers`, a selected param is not stacked or a layer
      is out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> params = Params({('enc', 'w'): Param(jnp.ones(2)), ('dec', 'w'): Param(jnp.ones(2))})
    >>> frozen, trainable = params.freeze('enc/.*').split(lambda path, p: not p.trainable)
    >>> list(frozen), list(trainable)
    ([('enc', 'w')], [('dec', 'w')])
  """
  return _refrozen(params, where, layers, frozen=True)


def unfreeze(params: Params, where: Where, *, layers: Iterable[int] | None = None) -> Params:
  """Returns params with the params `where` selects made trainable again.

  The counterpart of `freeze`, with the same `where` and `layers`. Integer,
  bool and PRNG key params (counters, seeds) are left non-trainable: they
  have no gradient. With `layers`, those layers are removed from the
  stacked params' `FROZEN_LAYERS`; a stacked param frozen as a whole becomes
  trainable with all its other layers frozen.

  Raises:
    ValueError: as for `freeze`.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> params = Params({('w',): Param(jnp.ones(2), trainable=False),
    ...                  ('step',): Param(jnp.zeros((), jnp.int32), trainable=False)})
    >>> [p.trainable for p in params.unfreeze('.*').values()]
    [True, False]
  """
  return _refrozen(params, where, layers, frozen=False)


def _refrozen(params: Params, where: Where, layers: Iterable[int] | None, frozen: bool) -> Params:
  what = "freeze" if frozen else "unfreeze"
  positions = selected_positions(params, where, what)
  wanted = None if layers is None else _layer_list(what, layers)
  s = params._structure
  flags = list(s.trainable)
  metas = list(s.metadata)
  if wanted is not None:
    _check_stacked(what, [s.paths[i] for i in positions if not stack_size(metas[i])])
  for i in positions:
    # Counters and keys have no gradient: unfreezing never makes them trainable.
    if not frozen and not is_inexact_dtype(getattr(params._values[i], "dtype", None)):
      continue
    if wanted is None:
      flags[i] = not frozen
      metas[i] = _with_frozen_layers(metas[i], ())
      continue
    if frozen and not flags[i]:
      continue  # frozen as a whole: every layer is frozen already
    size = stack_size(metas[i])
    chosen = {_layer_index(what, s.paths[i], layer, size) for layer in wanted}
    before = set(frozen_layers(metas[i])) if flags[i] else set(range(size))
    after = before | chosen if frozen else before - chosen
    flags[i] = True
    metas[i] = _with_frozen_layers(metas[i], tuple(sorted(after)))
  if tuple(flags) == s.trainable and tuple(metas) == s.metadata:
    return params
  return params._restructured(
      Structure(s.paths, s.ranks, tuple(flags), tuple(metas), s.locked, s.index())
  )


def _with_frozen_layers(metadata: Metadata, layers: tuple[int, ...]) -> Metadata:
  """`metadata` recording `layers` as frozen; without the entry when empty."""
  if layers:
    return metadata.merged({FROZEN_LAYERS: layers})
  if FROZEN_LAYERS not in metadata:
    return metadata
  rest = {key: value for key, value in metadata.items() if key != FROZEN_LAYERS}
  return Metadata(rest) if rest else EMPTY_METADATA


def _layer_list(what: str, layers: Iterable[int]) -> list[int]:
  if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
    raise TypeError(
        f"{what}: layers must be a list of layer indices (ints), e.g. [0, 1];"
        f" got {type(layers).__name__} {layers!r}."
    )
  wanted = []
  for layer in layers:
    try:
      if isinstance(layer, bool):
        raise TypeError
      wanted.append(operator.index(layer))
    except TypeError:
      raise TypeError(
          f"{what}: layers must be layer indices (ints), got {type(layer).__name__}"
          f" {layer!r} among {layers!r}."
      ) from None
  if not wanted:
    raise ValueError(
        f"{what}: layers is empty, so nothing would change; pass the indices of"
        f" the layers to {what}, or leave layers out to {what} whole params."
    )
  return wanted


def stack_size(metadata: Mapping[str, Any]) -> int:
  """The outermost stacked size of a param (0 when it is not stacked).

  Example:
    >>> stack_size({'stacked': (4, 2)}), stack_size({})
    (4, 0)
  """
  sizes = metadata.get(STACKED)
  if isinstance(sizes, tuple) and sizes and isinstance(sizes[0], int):
    return sizes[0]
  return 0


def _check_stacked(what: str, unstacked: Sequence[Path]) -> None:
  if unstacked:
    shown = ", ".join(path_text(path) for path in unstacked[:3])
    more = f" and {len(unstacked) - 3} more" if len(unstacked) > 3 else ""
    raise ValueError(
        f"{what}(..., layers=...) acts on stacked params (metadata {STACKED!r},"
        f" from blox.graph.Repeat), but {shown}{more} is not stacked. Narrow"
        f" where to the stack's params (e.g. 'net/stack/.*'), or leave layers"
        f" out to {what} whole params."
    )


def _layer_index(what: str, path: Path, layer: int, size: int) -> int:
  """`layer` as an index in `range(size)` (negative ones count from the end)."""
  if not -size <= layer < size:
    raise ValueError(
        f"{what}: param {path_text(path)} is stacked for {size} layers, so"
        f" layer {layer} is out of range; layers index the outermost stacked"
        f" axis, from 0 to {size - 1} (or -1 for the last)."
    )
  return layer % size
