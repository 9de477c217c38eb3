"""`load`: a checkpoint file back into `Params` (or a whole state), exactly; never runs code from it.

Loading runs as named steps: open the archive and read its header, compare
the header with the template `like` (if any), read each value and place it
on its devices, and rebuild the container. With `like`, the file provides
only the values: the structure (order, ranks, flags, metadata, locked flag)
is the template's, so code wins over an old file. Without `like`, everything
is the file's, and the paths are listed in file order (ranks 0..n-1, see
`blox.params._structure`).

Example:
  >>> import os, tempfile
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params, save
  >>> params = Params({('w',): Param(jnp.arange(3.0))}).locked()
  >>> path = os.path.join(tempfile.mkdtemp(), 'params.npz')
  >>> save(path, params)
  >>> restored = load(path, like=jax.eval_shape(lambda: params))
  >>> restored[('w',)].value
  Array([0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, overload

import jax

from blox.params._checkpoint_format import HEADER_MEMBER, CheckpointError, Entry, Header, Leaf, decode_leaves
from blox.params._checkpoint_read import (
    CheckpointWarning,
    check_enabled_dtype,
    compare_entries,
    format_errors,
    place,
    read_array,
    rebuild,
)
from blox.params._checkpoint_tree import load_tree
from blox.params._container import Params
from blox.params._paths import Path, path_text

__all__ = ["Shardings", "load"]

Shardings: TypeAlias = Params | Mapping[Path, Any] | jax.sharding.Sharding

_State = TypeVar("_State")


@overload
def load(
    path: str | os.PathLike[str],
    like: None = None,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> Params: ...


@overload
def load(
    path: str | os.PathLike[str],
    like: _State,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> _State: ...


def load(
    path: str | os.PathLike[str],
    like: Any = None,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> Any:
  """Reads params (or a whole pytree state) saved by `save`. Never unpickles.

  A file holding a pytree (e.g. params and an optax state) needs a template,
  `like=`: the same pytree, concrete or abstract (`jax.eval_shape`); the
  file's leaves are checked against it by key path and the result has its
  structure (see `blox.params._checkpoint_tree`).

  Values come back as jax arrays with their saved dtypes, typed PRNG keys as
  typed keys of their saved implementation.

  Without `like`, everything comes from the file: the trainable flags,
  metadata and locked flag as saved, and the paths in the saved order (the
  order of the container that was saved).

  With `like`, the file provides only the values: the structure (path order,
  trainable flags, metadata, locked flag) is `like`'s, so the result has the
  same pytree structure as `like` and reuses functions compiled for it. Code
  wins over an old file: a pretrained checkpoint saved with every param
  trainable loads into a template with a frozen backbone as frozen, and
  sharding metadata changed since the save is kept.

  Args:
    path: the checkpoint file.
    like: optional template (concrete params, or abstract ones from
      `jax.eval_shape`; or a whole pytree state holding them, arrays and
      Python scalars) that gives the result its structure. Paths (and leaf
      key paths) missing from the file, unexpected ones, and shape and dtype
      mismatches (a typed PRNG key against plain data counts as a dtype
      mismatch) are reported together.
    shardings: where to place the values (with a pytree template: one
      sharding for all, or None): `Params` whose values are
      `jax.sharding.Sharding`s (e.g. from `blox.parallel.param_shardings`), a
      mapping from path to sharding (or None for the default device), or one
      sharding for all. Each value is put on its devices directly. Entries
      for paths that are not loaded are ignored.
    strict: with `like`, whether a mismatch is an error. With `strict=False`
      the result holds only the params that are in both and match (with
      `like`'s flags, metadata, order and locked flag), and a
      `CheckpointWarning` lists the rest.

  Raises:
    CheckpointError: the file is truncated, corrupt, not a blox checkpoint,
      or of a newer format version; or it holds a pytree state and no `like`
      is given. The message names the file.
    ValueError: `strict` and the file does not match `like` (one message
      listing every mismatch by path); `shardings` lacks a loaded path; or a
      64-bit value while JAX's 64-bit mode is off.
    OSError: the file cannot be opened (e.g. FileNotFoundError).

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params, save
    >>> path = os.path.join(tempfile.mkdtemp(), 'ckpt.npz')
    >>> save(path, Params({('b',): Param(jnp.zeros(1)), ('a',): Param(jnp.ones(1))}))
    >>> list(load(path))
    [('b',), ('a',)]
  """
  source = os.fspath(path)
  with open(source, "rb") as file, _open_archive(file, source) as archive:
    leaves = _read_leaves(archive, source)
    if like is not None and not isinstance(like, Params):
      return load_tree(archive, leaves, like, shardings, strict, source)
    if len(leaves) != 1 or leaves[0].params is None or leaves[0].key:
      raise CheckpointError(
          f"{source!r} holds a pytree of {len(leaves)} leaves, not one Params; pass"
          " a template of the saved state, like=state (or"
          " like=jax.eval_shape(init_fn)), to load it."
      )
    header = leaves[0].params
    selected = _select(header, like, strict, source)
    values = _read_and_place(archive, header, selected, shardings, source)
  return rebuild(header, selected, values, like)


def _open_archive(file: Any, source: str) -> zipfile.ZipFile:
  """The zip archive in `file`; anything else is a CheckpointError."""
  try:
    return zipfile.ZipFile(file)
  # Any exception: a damaged archive makes zipfile fail in many ways
  # (struct.error, NotImplementedError, UnicodeDecodeError, ...).
  except Exception as error:
    raise CheckpointError(
        f"{source!r} is not a readable blox checkpoint: it is not a zip archive"
        f" ({type(error).__name__}: {error}). The file may be empty, truncated"
        " (an interrupted copy?) or of another kind."
    ) from error


def _read_leaves(archive: zipfile.ZipFile, source: str) -> tuple[Leaf, ...]:
  """The decoded header member; a missing or corrupt one is a CheckpointError."""
  if HEADER_MEMBER not in archive.namelist():
    raise CheckpointError(
        f"{source!r} is not a blox checkpoint: the archive has no {HEADER_MEMBER}"
        " member (a plain .npz? open it with numpy.load instead)."
    )
  with format_errors(source, f"reading {HEADER_MEMBER}"):
    data = archive.read(HEADER_MEMBER)
  return decode_leaves(data, source)


def _select(header: Header, like: Params | None, strict: bool, source: str) -> list[Entry]:
  """The entries to load: all of them, or those matching `like`.

  A mismatch raises (strict) or warns and is skipped (not strict).
  """
  if like is None:
    return list(header.entries)
  selected, problems = compare_entries(header.entries, like, source)
  if problems:
    report = (
        f"Checkpoint {source!r} does not match `like` ({len(problems)}"
        " problems):\n" + "\n".join(problems)
    )
    if strict:
      raise ValueError(
          report + "\nFix the template, or pass strict=False to load only the"
          " params that match."
      )
    # stacklevel 3: the warning points at the caller of `load`.
    warnings.warn(
        CheckpointWarning(report + "\nOnly the matching params were loaded."),
        stacklevel=3,
    )
  return selected


def _read_and_place(
    archive: zipfile.ZipFile,
    header: Header,
    selected: Sequence[Entry],
    shardings: Shardings | None,
    source: str,
) -> list[jax.Array]:
  """Each selected value read from the archive and put on its devices."""
  for entry in selected:
    check_enabled_dtype(entry)
  placement = _sharding_table(shardings, [entry.path for entry in selected])
  index = {entry.path: i for i, entry in enumerate(header.entries)}
  return [
      place(
          entry, read_array(archive, index[entry.path], entry, source),
          placement[entry.path], source,
      )
      for entry in selected
  ]


def _sharding_table(
    shardings: Shardings | None, paths: Sequence[Path]
) -> dict[Path, jax.sharding.Sharding | None]:
  """The sharding of each path to load, from any accepted form of `shardings`."""
  if shardings is None:
    return {path: None for path in paths}
  if isinstance(shardings, jax.sharding.Sharding):
    return {path: shardings for path in paths}
  if isinstance(shardings, Params):
    given: Mapping[Path, Any] = {p: param.value for p, param in shardings.items()}
  elif isinstance(shardings, Mapping):
    given = shardings
  else:
    raise TypeError(
        "shardings must be Params of shardings (e.g. from"
        " blox.parallel.param_shardings), a mapping from path to sharding, or one"
        f" jax.sharding.Sharding; got {type(shardings).__name__}."
    )
  lacking = [path for path in paths if path not in given]
  if lacking:
    raise ValueError(
        f"shardings has no entry for the params {lacking}; give a sharding (or"
        " None for the default device) for every param that is loaded."
    )
  table: dict[Path, jax.sharding.Sharding | None] = {}
  for path in paths:
    sharding = given[path]
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
      raise TypeError(
          f"shardings[{path_text(path)}] is {type(sharding).__name__}, not a"
          " jax.sharding.Sharding or None."
      )
    table[path] = sharding
  return table


