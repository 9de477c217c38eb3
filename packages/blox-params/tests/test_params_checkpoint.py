"""Round trips through `blox.params.save` / `load`: exact values, keys, flags."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

from blox.params import Param, Params, load, save

# These JAX callables lack annotations; typed aliases keep mypy strict happy.
_structure: Callable[[Any], object] = jax.tree.structure
_spec: Callable[..., PartitionSpec] = PartitionSpec


def _bits(value: Any) -> np.ndarray:
  """The raw bits of a value, so NaN payloads and -0.0 compare exactly."""
  if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.random.key_data(value)
  array = np.asarray(value)
  return array if array.dtype.kind == "b" else array.view(f"u{array.dtype.itemsize}")


def assert_identical(expected: Params, actual: Params) -> None:
  """Same paths in the same order, flags, metadata, locked flag, dtypes and bits."""
  assert list(actual) == list(expected)
  assert actual.is_locked == expected.is_locked
  assert _structure(actual) == _structure(expected)
  for path in expected:
    want, got = expected[path], actual[path]
    assert got.trainable == want.trainable, path
    assert got.metadata == want.metadata, path
    assert isinstance(got.value, jax.Array), path
    assert got.value.dtype == want.value.dtype, path
    assert got.value.shape == want.value.shape, path
    np.testing.assert_array_equal(_bits(got.value), _bits(want.value))


def _varied_params() -> Params:
  nan_with_payload = np.array([0x7FC00123], np.uint32).view(np.float32)
  return Params({
      ("ck_round", "kernel"): Param(jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 3),
      ("ck_round", "bias"): Param(
          jnp.asarray(np.concatenate([nan_with_payload, [-0.0, np.inf]]).astype(np.float32)),
          metadata={"sharding": (None,), "note": None},
      ),
      ("ck_round", "half"): Param(jnp.asarray([1.5, -2.25], jnp.float16)),
      ("ck_round", "count"): Param(jnp.asarray(7, jnp.int32), trainable=False),
      ("ck_round", "step"): Param(jnp.asarray(4_000_000_000, jnp.uint32), trainable=False),
      ("ck_round", "mask"): Param(jnp.asarray([True, False, True]), trainable=False),
      ("ck_round", "small"): Param(np.asarray([-128, 127], np.int8)),
      ("ck_round", "complex"): Param(jnp.asarray([1 + 2j], jnp.complex64)),
      ("ck_round", "empty"): Param(jnp.zeros((0, 3), jnp.float32)),
      ("ck_round", "key"): Param(
          jax.random.key(42), trainable=False, metadata={"rng_stream": "seed"}
      ),
      ("ck_round", "keys"): Param(jax.random.split(jax.random.key(1), 3), trainable=False),
      ("ck_round", "rbg"): Param(jax.random.key(5, impl="rbg"), trainable=False),
      ("ck_round", "meta"): Param(
          jnp.ones(()),
          metadata={
              "axes": ("data", None, ("nested", 1, 2.5, True)),
              "flag": False,
              "big": 2**70,
              "ratio": -0.125,
              "inf": float("inf"),
              "empty": (),
          },
      ),
  })


def test_round_trip_is_exact(tmp_path: pathlib.Path) -> None:
  params = _varied_params().locked()
  target = tmp_path / "ckpt.npz"
  save(target, params)
  assert_identical(params, load(target))
  assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_unlocked_params_load_unlocked(tmp_path: pathlib.Path) -> None:
  params = Params({("ck_unlocked", "w"): Param(jnp.ones(2))})
  save(tmp_path / "a.npz", params)
  save(tmp_path / "b.npz", params.locked())
  assert not load(tmp_path / "a.npz").is_locked
  assert load(tmp_path / "b.npz").is_locked


def test_empty_params_round_trip(tmp_path: pathlib.Path) -> None:
  save(tmp_path / "empty.npz", Params(locked=True))
  loaded = load(tmp_path / "empty.npz")
  assert len(loaded) == 0 and loaded.is_locked


def test_typed_keys_continue_the_same_stream(tmp_path: pathlib.Path) -> None:
  for impl in ("threefry2x32", "rbg"):
    seed = jax.random.key(123, impl=impl)
    save(tmp_path / "keys.npz", Params({("ck_stream", "seed"): Param(seed)}))
    restored = load(tmp_path / "keys.npz")[("ck_stream", "seed")].value
    assert jax.random.key_impl(restored) == jax.random.key_impl(seed)
    for counter in (0, 1, 2**31):
      np.testing.assert_array_equal(
          jax.random.key_data(jax.random.fold_in(restored, counter)),
          jax.random.key_data(jax.random.fold_in(seed, counter)),
      )


def test_saving_twice_gives_the_same_bytes(tmp_path: pathlib.Path) -> None:
  params = _varied_params()
  save(tmp_path / "one.npz", params)
  save(tmp_path / "two.npz", params)
  assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_saving_over_a_checkpoint_replaces_it(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "ckpt.npz"
  save(target, Params({("ck_over", "w"): Param(jnp.zeros(2))}))
  save(target, Params({("ck_over", "w"): Param(jnp.ones(2))}))
  np.testing.assert_array_equal(load(target)[("ck_over", "w")].value, np.ones(2))
  assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_new_checkpoints_respect_the_umask_and_replacements_keep_the_mode(
    tmp_path: pathlib.Path,
) -> None:
  params = Params({("ck_mode", "w"): Param(jnp.zeros(2))})
  previous = os.umask(0o077)
  try:
    save(tmp_path / "private.npz", params)
    os.umask(0o022)
    save(tmp_path / "shared.npz", params)
  finally:
    os.umask(previous)
  assert stat.S_IMODE(os.stat(tmp_path / "private.npz").st_mode) == 0o600
  assert stat.S_IMODE(os.stat(tmp_path / "shared.npz").st_mode) == 0o644
  os.chmod(tmp_path / "shared.npz", 0o640)
  save(tmp_path / "shared.npz", params)
  assert stat.S_IMODE(os.stat(tmp_path / "shared.npz").st_mode) == 0o640
  assert sorted(os.listdir(tmp_path)) == ["private.npz", "shared.npz"]


def test_numpy_alone_reads_the_file(tmp_path: pathlib.Path) -> None:
  params = Params({
      ("ck_numpy", "w"): Param(jnp.asarray([1.0, 2.0], jnp.bfloat16)),
      ("ck_numpy", "b"): Param(jnp.asarray([3, 4], jnp.int32), trainable=False),
  })
  save(tmp_path / "ckpt.npz", params)
  with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as archive:
    header = json.loads(archive["blox_checkpoint.json"])
    assert header["format"] == "blox.params.checkpoint" and header["version"] == 2
    # One Params is one leaf, at the empty key path.
    assert [(leaf["key"], leaf["kind"]) for leaf in header["leaves"]] == [("", "params")]
    header = header["leaves"][0]
    assert [p["path"] for p in header["params"]] == [["ck_numpy", "w"], ["ck_numpy", "b"]]
    assert header["params"][1]["trainable"] is False
    # bfloat16 is stored as its raw 16 bits.
    assert archive["v0"].dtype == np.uint16 and header["params"][0]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(archive["v0"], _bits(params[("ck_numpy", "w")].value))
    np.testing.assert_array_equal(archive["v1"], [3, 4])


def test_load_with_a_matching_template_round_trips(tmp_path: pathlib.Path) -> None:
  params = Params({
      ("ck_like", "w"): Param(jnp.ones((2, 3)), metadata={"axes": ("a", None)}),
      ("ck_like", "k"): Param(jax.random.key(0), trainable=False),
  })
  save(tmp_path / "ckpt.npz", params)
  template = jax.eval_shape(lambda: params)
  loaded = load(tmp_path / "ckpt.npz", like=template)
  assert_identical(params, loaded)
  assert jnp.issubdtype(loaded[("ck_like", "k")].value.dtype, jax.dtypes.prng_key)


def _pretrained() -> Params:
  """A checkpoint's params as saved: everything trainable, old metadata."""
  return Params({
      ("ck_tune", "backbone", "w"): Param(jnp.arange(6.0).reshape(2, 3), metadata={"axes": ("a", None)}),
      ("ck_tune", "backbone", "b"): Param(jnp.arange(3.0)),
      ("ck_tune", "head", "w"): Param(jnp.full((3, 1), 2.0)),
      ("ck_tune", "seed"): Param(jax.random.key(3)),
  })


def _fine_tuning() -> Params:
  """The model's params in code: a frozen backbone with new metadata, locked.

  Its paths are listed in the reverse of the file's order (a container built
  from a dict lists its paths in the dict's order): a template whose order
  differs from the file's.
  """
  entries = {
      ("ck_tune", "backbone", "w"): Param(
          jnp.zeros((2, 3)), trainable=False, metadata={"axes": (None, "model"), "frozen": True}
      ),
      ("ck_tune", "backbone", "b"): Param(jnp.zeros(3), trainable=False),
      ("ck_tune", "head", "w"): Param(jnp.zeros((3, 1)), metadata={"axes": ("model", None)}),
      ("ck_tune", "seed"): Param(jax.random.key(0), trainable=False, metadata={"rng_stream": "seed"}),
  }
  return Params({path: entries[path] for path in list(entries)[::-1]}, locked=True)


def test_a_template_gives_its_flags_metadata_and_locked_flag(tmp_path: pathlib.Path) -> None:
  saved = _pretrained()
  assert not saved.is_locked
  save(tmp_path / "pretrained.npz", saved)
  like = _fine_tuning()
  loaded = load(tmp_path / "pretrained.npz", like=like)
  # The structure is the template's: flags, metadata, order, locked flag.
  assert _structure(loaded) == _structure(like)
  assert list(loaded) == list(like) == list(saved)[::-1]
  assert loaded.is_locked
  for path in like:
    assert loaded[path].trainable == like[path].trainable, path
    assert loaded[path].metadata == like[path].metadata, path
  assert loaded[("ck_tune", "backbone", "w")].trainable is False
  assert dict(loaded[("ck_tune", "backbone", "w")].metadata) == {
      "axes": (None, "model"), "frozen": True
  }
  # The frozen backbone stays out of the gradient-receiving half.
  trainable, _ = loaded.split()
  assert list(trainable) == [("ck_tune", "head", "w")]
  # The values are the file's, typed keys included.
  for path in saved:
    np.testing.assert_array_equal(_bits(loaded[path].value), _bits(saved[path].value))
  assert jnp.issubdtype(loaded[("ck_tune", "seed")].value.dtype, jax.dtypes.prng_key)
  # Without a template, everything is the file's.
  plain = load(tmp_path / "pretrained.npz")
  assert_identical(saved, plain)
  assert not plain.is_locked
  assert plain[("ck_tune", "backbone", "w")].trainable is True


def test_an_unlocked_template_gives_unlocked_params(tmp_path: pathlib.Path) -> None:
  saved = _pretrained().locked()
  save(tmp_path / "locked.npz", saved)
  like = jax.eval_shape(lambda: _fine_tuning().unlocked())
  loaded = load(tmp_path / "locked.npz", like=like)
  assert not loaded.is_locked
  assert load(tmp_path / "locked.npz").is_locked


def test_paths_new_to_a_process_keep_the_saved_order(tmp_path: pathlib.Path) -> None:
  # Creation order here is z, a, m (not sorted); a fresh process has never
  # seen these paths and must list them as saved.
  paths = [("ck_order", name) for name in ("z", "a", "m")]
  params = Params()
  for path in paths:
    params[path] = Param(jnp.zeros(1))
  assert list(params) == paths
  save(tmp_path / "ckpt.npz", params)
  script = (
      "import json, sys; from blox.params import load;"
      " print(json.dumps([list(p) for p in load(sys.argv[1])]))"
  )
  result = subprocess.run(
      [sys.executable, "-c", script, str(tmp_path / "ckpt.npz")],
      capture_output=True, text=True, check=True, timeout=120,
  )
  assert json.loads(result.stdout) == [list(p) for p in paths]


def test_sharded_params_round_trip_onto_their_devices(tmp_path: pathlib.Path) -> None:
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("x",))
  rows = NamedSharding(mesh, _spec("x"))
  replicated = NamedSharding(mesh, _spec())
  params = Params({
      ("ck_shard", "w"): Param(
          jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(16, 4), rows)
      ),
      ("ck_shard", "b"): Param(jax.device_put(jnp.arange(4, dtype=jnp.bfloat16), replicated)),
      ("ck_shard", "keys"): Param(
          jax.device_put(jax.random.split(jax.random.key(7), 8), rows), trainable=False
      ),
  }).locked()
  save(tmp_path / "ckpt.npz", params)
  shardings = jax.tree.map(lambda value: value.sharding, params)
  loaded = load(tmp_path / "ckpt.npz", like=params, shardings=shardings)
  assert_identical(params, loaded)
  for path in params:
    assert loaded[path].value.sharding == params[path].value.sharding, path
  # A mapping from path to sharding, and one sharding for every param, work too.
  # (JAX may spell a replicated key array's spec P(None,), hence is_equivalent_to.)
  by_path = load(tmp_path / "ckpt.npz", shardings={p: replicated for p in params})
  everywhere = load(tmp_path / "ckpt.npz", shardings=replicated)
  for path in params:
    for value in (by_path[path].value, everywhere[path].value):
      assert value.sharding.is_equivalent_to(replicated, value.ndim), path
  assert_identical(params, everywhere)


# Random params round-trip exactly.

_DTYPES = ["float32", "bfloat16", "float16", "int8", "int32", "uint8", "uint32", "complex64", "bool"]
_NAMES = st.text(alphabet="abxyz_", min_size=1, max_size=3)
_METADATA_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=6,
)


@st.composite
def _values(draw: st.DrawFn) -> Any:
  if draw(st.integers(0, 9)) == 0:
    return jax.random.key(draw(st.integers(0, 2**32 - 1)))
  dtype = jnp.dtype(draw(st.sampled_from(_DTYPES)))
  shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
  count = int(np.prod(shape, dtype=np.int64))
  if dtype.kind == "b":
    array = np.asarray(draw(st.lists(st.booleans(), min_size=count, max_size=count)), bool)
  else:
    size = count * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    array = np.frombuffer(raw, np.uint8).view(dtype)
  array = array.reshape(shape)
  return jnp.asarray(array) if draw(st.booleans()) else array.copy()


@st.composite
def _random_params(draw: st.DrawFn) -> Params:
  paths = draw(st.lists(st.lists(_NAMES, min_size=1, max_size=3).map(tuple), max_size=5, unique=True))
  params = Params()
  for path in paths:
    params[("ck_random",) + path] = Param(
        draw(_values()),
        trainable=draw(st.booleans()),
        metadata=draw(st.dictionaries(st.text(max_size=4), _METADATA_VALUES, max_size=3)),
    )
  return params.locked() if draw(st.booleans()) else params


@settings(max_examples=40, deadline=None)
@given(_random_params())
def test_random_params_round_trip_exactly(params: Params) -> None:
  with tempfile.TemporaryDirectory() as folder:
    target = os.path.join(folder, "ckpt.npz")
    save(target, params)
    loaded = load(target)
    assert os.listdir(folder) == ["ckpt.npz"]
  assert_identical(params, loaded)
