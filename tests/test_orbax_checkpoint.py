"""blox params and train states go through orbax-checkpoint as they are.

No adapter: `Params` is a pytree whose leaves are its values (typed PRNG
keys included), so an orbax `CheckpointManager` with `StandardSave` /
`StandardRestore` stores the arrays, and the restore target (concrete params
or `blox.parallel.abstract_params`) gives back the paths, trainable flags,
metadata and locked flag. Quantized params (`blox.models.quantize`: int8,
packed uint8, float32 scales, their metadata) are params like any other.
One process here; tests/test_orbax_multihost.py runs several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import blox as bx
import blox.models as bm
from blox.params import SHARDING, is_prng_key

RULES = (("embed", "data"), ("mlp", "model"))
_structure: Callable[[Any], Any] = jax.tree.structure  # unannotated in JAX


class _Model:
  """Linear -> relu -> Dropout -> Linear, with logical sharding metadata."""

  def __init__(self) -> None:
    graph = bx.Graph("net")
    self.rng = bx.Rng(graph.child("rng"))
    self.hidden = bx.Linear(graph.child("hidden"), 8, rng=self.rng,
                            kernel_metadata={SHARDING: ("embed", "mlp"), "note": "in"})
    self.dropout = bx.Dropout(graph.child("dropout"), 0.5, rng=self.rng)
    self.out = bx.Linear(graph.child("out"), 4, rng=self.rng, kernel_metadata={SHARDING: ("mlp", "embed")})
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=2, decay_steps=20)
    self.optimizer = optax.adamw(schedule, weight_decay=1e-3)
    self.jitted_step = jax.jit(self.step)

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    h, params = self.hidden(params, x)
    h, params = self.dropout(params, jax.nn.relu(h))
    return self.out(params, h)

  def init(self) -> bx.Params:
    params = self.rng.seed(bx.Params(), seed=3)
    _, params = self(params, jnp.zeros((1, 4)))
    return params.locked()

  def init_state(self) -> tuple[bx.Params, Any, jax.Array]:
    params = self.init()
    return params, self.optimizer.init(params.split()[0]), jnp.zeros((), jnp.int32)

  def step(self, state: Any, x: jax.Array) -> Any:
    params, opt_state, step = state

    def loss_fn(params: bx.Params) -> tuple[jax.Array, bx.Params]:
      prediction, params = self(params, x)
      return jnp.mean((prediction - jnp.sin(x)) ** 2), params

    _, params, grads = bx.value_and_grad(loss_fn)(params)
    trainable, rest = params.split()
    updates, opt_state = self.optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, step + 1


@pytest.fixture(scope="module")
def model() -> _Model:
  return _Model()  # one per module: its jitted step compiles once


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Any]:
  checkpoints = ocp.CheckpointManager(tmp_path / "checkpoints")
  yield checkpoints
  checkpoints.close()


def _train(model: _Model, state: Any, steps: int) -> Any:
  step = model.jitted_step
  for i in range(steps):
    state = step(state, jax.random.normal(jax.random.key(i), (8, 4)))
  return state


def _raw(leaf: Any) -> Any:
  return jax.random.key_data(leaf) if is_prng_key(leaf) else leaf


def _bits(leaf: Any) -> tuple[str, tuple[int, ...], bytes]:
  array = np.asarray(_raw(leaf))
  return str(array.dtype), array.shape, array.tobytes()


def _assert_identical(restored: Any, saved: Any) -> None:
  """Same pytree structure (flags, metadata, locked) and the same bits in every leaf."""
  assert _structure(restored) == _structure(saved)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(saved)):
    assert _bits(got) == _bits(want), jax.tree_util.keystr(path)
    if is_prng_key(want):
      assert jax.random.key_impl(got) == jax.random.key_impl(want)


def _assert_same_params(restored: bx.Params, saved: bx.Params) -> None:
  assert restored.is_locked == saved.is_locked
  assert list(restored) == list(saved)
  for path, param in saved.items():
    assert restored[path].trainable == param.trainable, path
    assert restored[path].metadata == param.metadata, path


def test_params_round_trip_with_a_concrete_template(model: _Model, manager: Any) -> None:
  params = _train(model, model.init_state(), 2)[0]
  assert is_prng_key(params[("net", "rng", "seed")].value)
  assert not params[("net", "rng", "counter")].trainable
  manager.save(0, args=ocp.args.StandardSave(params))
  manager.wait_until_finished()
  restored = manager.restore(0, args=ocp.args.StandardRestore(params))
  assert isinstance(restored, bx.Params)
  _assert_same_params(restored, params)
  _assert_identical(restored, params)
  assert restored[("net", "hidden", "kernel")].metadata == {SHARDING: ("embed", "mlp"), "note": "in"}


def test_params_restore_onto_a_mesh_from_abstract_params(model: _Model, manager: Any) -> None:
  params = _train(model, model.init_state(), 2)[0]
  manager.save(0, args=ocp.args.StandardSave(params))
  manager.wait_until_finished()
  mesh = bx.parallel.make_mesh((4, 2), ("data", "model"))
  target = bx.parallel.abstract_params(model.init, mesh, rules=RULES)
  restored = manager.restore(0, args=ocp.args.StandardRestore(target))
  _assert_same_params(restored, params)
  _assert_identical(restored, params)
  for path, param in restored.items():
    assert param.value.sharding.is_equivalent_to(target[path].value.sharding, param.value.ndim), path
  assert tuple(restored[("net", "hidden", "kernel")].value.sharding.spec) == ("data", "model")


def test_train_state_round_trip_and_resume(model: _Model, manager: Any) -> None:
  state = _train(model, model.init_state(), 2)
  manager.save(2, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  mesh = bx.parallel.make_mesh((2, 4), ("data", "model"))
  targets = {
      "concrete": model.init_state(),
      "abstract": jax.eval_shape(model.init_state),
      "sharded": bx.parallel.abstract_params(model.init_state, mesh, rules=RULES),
  }
  straight = _train(model, state, 1)
  for name, target in targets.items():
    restored = manager.restore(2, args=ocp.args.StandardRestore(target))
    _assert_same_params(restored[0], state[0])
    _assert_identical(restored, state)
    # The optimizer's moments are Params-shaped, with the params' flags and metadata.
    assert _structure(restored[1][0].mu) == _structure(state[0].split()[0]), name
    assert int(restored[2]) == 2
    resumed = _train(model, restored, 1)
    if name == "sharded":
      # Sharded over 8 devices, the gradients are summed in another order: float noise only.
      assert _structure(resumed) == _structure(straight)
      for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_allclose(np.asarray(_raw(got)), np.asarray(_raw(want)), rtol=1e-5, atol=1e-7)
    else:
      _assert_identical(resumed, straight)


def test_asynchronous_saves_hold_the_values_at_save_time(model: _Model, tmp_path: Path) -> None:
  options = ocp.CheckpointManagerOptions(max_to_keep=2)
  manager = ocp.CheckpointManager(tmp_path / "async", options=options)
  try:
    state = model.init_state()
    saved = {}
    donating_step = jax.jit(model.step, donate_argnums=0)
    for step in range(1, 4):
      state = _train(model, state, 1)
      saved[step] = jax.tree.map(lambda leaf: np.asarray(_raw(leaf)), state)
      assert manager.save(step, args=ocp.args.StandardSave(state))
      # Training goes on, donating the state's buffers, while the save is written.
      state = donating_step(state, jnp.ones((8, 4)))
    manager.wait_until_finished()
    assert not manager.is_saving_in_progress()
    assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
    for step in manager.all_steps():
      restored = manager.restore(step, args=ocp.args.StandardRestore(jax.eval_shape(model.init_state)))
      _assert_identical(jax.tree.map(lambda leaf: np.asarray(_raw(leaf)), restored), saved[step])
  finally:
    manager.close()


def test_the_template_gives_flags_and_metadata(model: _Model, manager: Any) -> None:
  # orbax stores arrays only: like bx.load(like=...), code wins over the file.
  params = model.init()
  manager.save(0, args=ocp.args.StandardSave(params))
  manager.wait_until_finished()
  kernel = ("net", "hidden", "kernel")
  frozen = params.set(kernel, trainable=False, metadata={"note": "frozen"}).unlocked()
  restored = manager.restore(0, args=ocp.args.StandardRestore(frozen))
  _assert_same_params(restored, frozen)
  assert _bits(restored[kernel].value) == _bits(params[kernel].value)


def test_a_template_with_other_paths_is_refused(model: _Model, manager: Any) -> None:
  params = model.init()
  manager.save(0, args=ocp.args.StandardSave(params))
  manager.wait_until_finished()
  renamed = bx.Params({
      (("net", "wide") if path == ("net", "hidden", "kernel") else path): param
      for path, param in params.items()
  })
  with pytest.raises(ValueError, match=r"do not match[\s\S]*\('net', 'hidden', 'kernel'\)"):
    manager.restore(0, args=ocp.args.StandardRestore(renamed))


@pytest.mark.parametrize(("saved_on", "restored_on"), [("auto", "explicit"), ("explicit", "auto")])
def test_params_saved_on_one_kind_of_mesh_restore_onto_the_other(
    model: _Model, manager: Any, saved_on: str, restored_on: str
) -> None:
  kinds = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}
  source = bx.parallel.make_mesh((4, 2), ("data", "model"), axis_types=kinds[saved_on])
  params = bx.parallel.init_sharded(model.init, source, rules=RULES)
  manager.save(0, args=ocp.args.StandardSave(params))
  manager.wait_until_finished()
  mesh = bx.parallel.make_mesh((2, 4), ("data", "model"), axis_types=kinds[restored_on])
  target = bx.parallel.abstract_params(model.init, mesh, rules=RULES)
  restored = manager.restore(0, args=ocp.args.StandardRestore(target))
  _assert_same_params(restored, params)
  _assert_identical(restored, params)
  kernel = restored[("net", "hidden", "kernel")].value
  assert kernel.sharding.mesh.axis_types == (kinds[restored_on],) * 2
  assert tuple(kernel.sharding.spec) == ("data", "model")
  if restored_on == "explicit":
    assert str(jax.typeof(kernel)) == "float32[4@data,8@model]"


TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
}


@pytest.mark.slow  # with blox.models' quantization tests (compiles two models)
def test_quantized_params_round_trip_and_run(manager: Any) -> None:
  model, params = bm.create(TINY_LLAMA)
  _, int8 = bm.quantize(model, params, bits=8)  # hooks `model` in place
  _, int4 = bm.quantize(model, params, bits=4, group_size=8)
  saved = {"int8": int8, "int4": int4}
  up = ("model", "lm", "layers", "layer", "mlp", "up", "kernel")
  assert int8[up].value.dtype == jnp.int8 and int4[up].value.dtype == jnp.uint8
  manager.save(0, args=ocp.args.StandardSave(saved))
  manager.wait_until_finished()
  # A new process has no quantized params to copy: it quantizes a new model
  # object abstractly (shapes, dtypes, flags, metadata), which also lets
  # that object run them.
  fresh = bm.CausalLM(bx.Graph("model").child("lm"), model.architecture)
  target = jax.eval_shape(lambda p: {
      "int8": bm.quantize(fresh, p, bits=8)[1],
      "int4": bm.quantize(fresh, p, bits=4, group_size=8)[1]}, params)
  restored = manager.restore(0, args=ocp.args.StandardRestore(target))
  for name, quantized in saved.items():
    _assert_same_params(restored[name], quantized)
    _assert_identical(restored[name], quantized)
  assert restored["int4"][up].metadata["quantized"] == ("int4", 1)
  ids = jnp.array([[1, 5, 7, 2], [3, 3, 4, 8]])
  forward = jax.jit(lambda p: fresh(p, ids)[0])
  for name, quantized in saved.items():
    np.testing.assert_array_equal(np.asarray(forward(restored[name])), np.asarray(forward(quantized)))
  assert not np.isnan(np.asarray(forward(restored["int4"]))).any()
