"""Loading a whole training state: a pytree checkpoint into the template's structure.

The file lists its leaves by key path (`jax.tree_util.keystr`); the template
`like` (concrete, or abstract from `jax.eval_shape`) gives the structure. The
two are compared leaf by leaf, every mismatch is reported by key path in one
error, and the values from the file are put into the template's tree. A
`Params` leaf loads as `load(path, like=params)` does: flags, metadata,
order and locked flag from the template.

Example:
  >>> import os, tempfile
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params, load, save
  >>> state = {'params': Params({('w',): Param(jnp.ones(2))}), 'step': 3}
  >>> path = os.path.join(tempfile.mkdtemp(), 'state.npz')
  >>> save(path, state)
  >>> restored = load(path, like=state)
  >>> restored['step'], restored['params'][('w',)].value
  (3, Array([1., 1.], dtype=float32))
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from blox.params._checkpoint_format import Entry, Leaf
from blox.params._checkpoint_read import (
    CheckpointWarning,
    check_enabled_dtype,
    compare_entries,
    describe_dtype,
    logical_dtype,
    place,
    read_array,
    rebuild,
)
from blox.params._container import Params

__all__ = ["load_tree"]

_PYTHON_SCALARS = (bool, int, float)


def load_tree(
    archive: zipfile.ZipFile,
    leaves: Sequence[Leaf],
    like: Any,
    shardings: Any,
    strict: bool,
    source: str,
) -> Any:
  """The state in `archive`, in the structure of the pytree `like`.

  Raises:
    ValueError: the file's leaves do not match `like` (one message listing
      every mismatch by key path); with `strict=False`, mismatching params
      inside a `Params` leaf are skipped with a `CheckpointWarning` instead.
    TypeError: `shardings` is not one `jax.sharding.Sharding` or None.
  """
  if shardings is not None and not isinstance(shardings, jax.sharding.Sharding):
    raise TypeError(
        "With a pytree template, shardings must be one jax.sharding.Sharding or"
        f" None, got {type(shardings).__name__}; place the loaded values with"
        " jax.device_put afterwards."
    )
  flat, treedef = jax.tree_util.tree_flatten_with_path(like, is_leaf=lambda x: isinstance(x, Params))
  wanted = [(jax.tree_util.keystr(key_path), template) for key_path, template in flat]
  by_key = {leaf.key: leaf for leaf in leaves}
  first: dict[str, int] = {}
  count = 0
  for leaf in leaves:
    first[leaf.key] = count
    count += len(leaf.entries())
  keys = {key for key, _ in wanted}
  problems = [f"  missing from the checkpoint: leaf {key!r}" for key in keys if key not in by_key]
  problems += [
      f"  unexpected in the checkpoint (not in like): leaf {leaf.key!r}"
      for leaf in leaves if leaf.key not in keys
  ]
  skipped: list[str] = []
  plans: list[tuple[str, Any, Leaf, list[Entry]]] = []
  for key, template in wanted:
    found_leaf = by_key.get(key)
    if found_leaf is None:
      continue
    leaf = found_leaf
    if isinstance(template, Params):
      if leaf.params is None:
        problems.append(f"  leaf {key!r}: like holds Params, the checkpoint an array")
        continue
      selected, found = compare_entries(leaf.params.entries, template, source)
      (skipped if not strict else problems).extend(f"  leaf {key!r}:{line}" for line in found)
      plans.append((key, template, leaf, selected))
    elif leaf.array is None:
      problems.append(f"  leaf {key!r}: like holds {_kind(template)}, the checkpoint Params")
    else:
      problem = _array_problem(leaf, template, source)
      if problem:
        problems.append(f"  leaf {key!r}: {problem}")
      plans.append((key, template, leaf, [leaf.array]))
  if problems:
    raise ValueError(
        f"Checkpoint {source!r} does not match `like` ({len(problems)} problems):\n"
        + "\n".join(problems + skipped)
        + "\nFix the template, like= (the same pytree as the saved state, e.g. from"
        " jax.eval_shape of the function that builds it)."
    )
  if skipped:
    warnings.warn(
        CheckpointWarning(
            f"Checkpoint {source!r} does not match `like` ({len(skipped)} problems):\n"
            + "\n".join(skipped) + "\nOnly the matching params were loaded."
        ),
        stacklevel=3,
    )
  results = [
      _load_leaf(archive, first[key], template, leaf, selected, shardings, source)
      for key, template, leaf, selected in plans
  ]
  return jax.tree_util.tree_unflatten(treedef, results)


def _kind(template: Any) -> str:
  if isinstance(template, _PYTHON_SCALARS):
    return f"a Python {type(template).__name__}"
  return "an array"


def _array_problem(leaf: Leaf, template: Any, source: str) -> str | None:
  """Why the array leaf cannot load into `template`, or None."""
  entry = leaf.array
  assert entry is not None
  if isinstance(template, _PYTHON_SCALARS):
    if not leaf.from_python or entry.shape:
      return f"like holds {_kind(template)}, the checkpoint {describe_dtype(entry)}{list(entry.shape)}"
    return None
  if not hasattr(template, "shape") or not hasattr(template, "dtype"):
    return (
        f"like holds {type(template).__name__}; a template holds arrays,"
        " jax.ShapeDtypeStruct values, Params or Python scalars"
    )
  if tuple(template.shape) != entry.shape:
    return f"shape mismatch: checkpoint {entry.shape}, like {tuple(template.shape)}"
  # A Python scalar is saved at 64 bits; jax.eval_shape sees it at 32.
  if not leaf.from_python and template.dtype != logical_dtype(entry, source):
    return f"dtype mismatch: checkpoint {describe_dtype(entry)}, like {template.dtype}"
  return None


def _load_leaf(
    archive: zipfile.ZipFile,
    first: int,
    template: Any,
    leaf: Leaf,
    selected: Sequence[Entry],
    sharding: jax.sharding.Sharding | None,
    source: str,
) -> Any:
  if leaf.params is not None:
    index = {entry.path: first + i for i, entry in enumerate(leaf.params.entries)}
    for entry in selected:
      check_enabled_dtype(entry)
    values = [
        place(entry, read_array(archive, index[entry.path], entry, source), sharding, source)
        for entry in selected
    ]
    return rebuild(leaf.params, selected, values, template)
  array_entry = leaf.array
  assert array_entry is not None
  entry = array_entry
  array = read_array(archive, first, entry, source)
  if isinstance(template, _PYTHON_SCALARS):
    return type(template)(array.item())
  if leaf.from_python:
    converted = array.astype(template.dtype)
    if not np.array_equal(converted.astype(array.dtype), array):
      raise ValueError(
          f"Checkpoint {source!r}: leaf {leaf.key!r} holds the Python value {array.item()!r},"
          f" which {template.dtype} cannot hold exactly; use a Python scalar (or a"
          " wider dtype) in the template."
      )
    return jax.device_put(converted, sharding)
  check_enabled_dtype(entry)
  return place(entry, array, sharding, source)
