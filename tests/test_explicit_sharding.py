"""One model on an Explicit mesh, an Auto mesh and one device: the same results.

A small transformer (embedding, a `Repeat` of pre-norm blocks with
grouped-query attention, RoPE and qk-norm, attention and residual dropout, a
weight-tied readout) sharded by logical rules, FSDP over 'data' and tensor
parallelism over 'model', on 8 simulated host devices.

Tolerances: the sharded runs reduce in another order (partial sums over
'data' and 'model'), so float32 results agree to about 1e-6, not bit for
bit; dropout masks and parameter values at init are bit-identical.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import blox as bx
from blox import parallel
from blox.parallel._shardings import sharded_init_function

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec
S = bx.SHARDING
RULES = (
    ("embed", "data"), ("heads", "model"), ("kv_heads", "model"), ("head_dim", None),
    ("mlp", "model"), ("vocab", "model"),
)
KINDS = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 host devices")


class Block(bx.Module):
  """x + attention(norm(x)), then x + dropout(mlp(norm(x)))."""

  rng: bx.KeySource = bx.setting()

  def __post_init__(self) -> None:
    g, rng = self.graph, self.rng
    self.norm1 = bx.RMSNorm(g.child("norm1"), scale_metadata={S: ("embed",)})
    self.attention = bx.MultiHeadAttention(
        g.child("attention"), 4, num_kv_heads=2, rope_base=10_000.0, qk_norm=True,
        use_bias=False, dropout_rate=0.1, rng=rng,
        projection_kernel_metadata={
            "query": {S: ("embed", "heads", "head_dim")},
            "key": {S: ("embed", "kv_heads", "head_dim")},
            "value": {S: ("embed", "kv_heads", "head_dim")},
            "out": {S: ("heads", "head_dim", "embed")},
        },
    )
    self.norm2 = bx.RMSNorm(g.child("norm2"), scale_metadata={S: ("embed",)})
    self.up = bx.Linear(g.child("up"), 64, rng=rng, kernel_metadata={S: ("embed", "mlp")},
                        bias_metadata={S: ("mlp",)})
    self.down = bx.Linear(g.child("down"), 32, rng=rng, use_bias=False,
                          kernel_metadata={S: ("mlp", "embed")})
    self.dropout = bx.Dropout(g.child("dropout"), 0.1, rng=rng)

  def __call__(self, params: bx.Params, x: jax.Array, *, is_training: bool = True
               ) -> tuple[jax.Array, bx.Params]:
    h, params = self.norm1(params, x)
    (h, _), params = self.attention.apply(params, h, is_training=is_training)
    x = x + h
    h, params = self.norm2(params, x)
    h, params = self.up(params, h)
    h, params = self.down(params, jax.nn.gelu(h))
    h, params = self.dropout(params, h, is_training=is_training)
    return x + h, params


def _model() -> tuple[bx.Rng, bx.Embed, bx.Repeat]:
  graph = bx.Graph("lm")
  rng = bx.Rng(graph.child("rng"))
  embed = bx.Embed(graph.child("embed"), 64, 32, rng=rng, embedding_metadata={S: ("vocab", "embed")})
  blocks = bx.Repeat(graph.child("blocks"), lambda node: Block(node, rng=rng), 2)
  return rng, embed, blocks


RNG, EMBED, BLOCKS = _model()
IDS = (jnp.arange(8 * 16).reshape(8, 16) * 7) % 64


def lm(params: bx.Params, ids: jax.Array, is_training: bool = True) -> tuple[jax.Array, bx.Params]:
  x, params = EMBED(params, ids)
  x, params = BLOCKS(params, x, is_training=is_training)
  return EMBED.attend(params, x)


def loss_fn(params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params]:
  logits, params = lm(params, ids)
  return bx.softmax_cross_entropy(logits[:, :-1], ids[:, 1:]).mean(), params


def init() -> bx.Params:
  return RNG.init(lm, IDS[:1, :4], seed=0)


@functools.cache
def reference_params() -> bx.Params:
  """The params initialised on one device, the reference of every test here
  (jitted: eager, op by op, it took seconds; params are immutable, so one
  copy serves every test)."""
  params: bx.Params = jax.jit(init)()
  return params


@jax.jit
def train_step(params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params, bx.Params]:
  loss, params, grads = bx.value_and_grad(loss_fn)(params, ids)
  trainable, rest = params.split()
  updated = jax.tree.map(lambda p, g: p - 0.1 * g, trainable, grads)
  return loss, updated.merge(rest), grads


def _on(kind: str) -> tuple[jax.sharding.Mesh, bx.Params, jax.Array]:
  mesh = parallel.make_mesh((4, 2), ("data", "model"), axis_types=KINDS[kind])
  params = parallel.init_sharded(init, mesh, rules=RULES)
  ids = jax.device_put(IDS, NamedSharding(mesh, P("data", None)))
  return mesh, params, ids


def _plain(value: Any) -> Any:
  """`value`, a typed PRNG key as its key data (numpy cannot hold keys)."""
  return jax.random.key_data(value) if bx.params.is_prng_key(value) else value


def _assert_close(got: bx.Params, want: bx.Params, rtol: float, atol: float) -> None:
  assert list(got) == list(want)
  for path in want:
    np.testing.assert_allclose(_plain(got[path].value), _plain(want[path].value), rtol=rtol,
                               atol=atol, err_msg=str(path))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_params_are_born_sharded_by_the_rules_with_the_values_of_one_device(kind: str) -> None:
  reference = reference_params()
  mesh, params, _ = _on(kind)
  shardings = parallel.param_shardings(params, mesh, RULES)
  for path, param in params.items():
    assert param.value.sharding.spec == shardings[path].value.spec, path
    np.testing.assert_array_equal(_plain(param.value), _plain(reference[path].value),
                                  err_msg=str(path))
  kernel = params[("lm", "blocks", "layer", "up", "kernel")].value
  assert kernel.sharding.spec == P(None, "data", "model")
  if kind == "explicit":
    assert jax.typeof(kernel).sharding.spec == P(None, "data", "model")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_param_is_materialised_whole_at_init(kind: str) -> None:
  # A 2048 x 2048 kernel split 8 ways: 2 MiB per device, 16 MiB whole. Its
  # init function draws it already split (the initializer's out_sharding on
  # Explicit axes, a sharding constraint on Auto ones), so the compiled init
  # never holds it whole; drawn whole and split at the end, it held 64 MiB.
  graph = bx.Graph("big")
  rng = bx.Rng(graph.child("rng"))
  layer = bx.Linear(graph.child("proj"), 2048, rng=rng, use_bias=False,
                    kernel_metadata={S: ("data", "model")})
  mesh = parallel.make_mesh((4, 2), ("data", "model"), axis_types=KINDS[kind])
  jitted, arrays = sharded_init_function(lambda: rng.init(layer, jnp.ones((1, 2048)), seed=0), mesh)
  memory = jitted.lower(*arrays).compile().memory_analysis()
  whole = 2048 * 2048 * 4
  assert memory.output_size_in_bytes < whole / 4
  assert memory.temp_size_in_bytes < whole / 2, memory


@pytest.mark.slow  # compiles the model on three meshes: `pytest -m slow`
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_train_step_with_dropout_equals_one_device(kind: str) -> None:
  want_loss, want_params, want_grads = train_step(reference_params(), IDS)
  mesh, params, ids = _on(kind)
  with jax.set_mesh(mesh):
    loss, new_params, grads = train_step(params, ids)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  _assert_close(grads, want_grads, rtol=1e-4, atol=1e-6)
  _assert_close(new_params, want_params, rtol=1e-5, atol=1e-6)
  # The dropout counters advanced alike: the same masks next step.
  counter = ("lm", "rng", "counter")
  assert int(new_params[counter].value) == int(want_params[counter].value)


@pytest.mark.slow  # compiles the model on three meshes: `pytest -m slow`
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_forward_pass_with_dropout_draws_the_same_masks(kind: str) -> None:
  forward = jax.jit(lambda p, ids: lm(p, ids)[0])
  want = forward(reference_params(), IDS)
  mesh, params, ids = _on(kind)
  with jax.set_mesh(mesh):
    got = forward(params, ids)
  # Dropped units are exactly zero in both, so the masks must coincide for
  # the logits to agree this closely.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _decode(params: bx.Params, x: jax.Array) -> jax.Array:
  attention = BLOCKS.layer.attention  # type: ignore[attr-defined]  # Block's child
  layer = jax.tree.map(lambda leaf: leaf, BLOCKS.layer_params(params, 0))
  cache, _ = attention.initial_state(layer, x[:, 0], max_length=8)
  (first, cache), _ = attention.apply(layer, x[:, :3], cache, is_training=False)
  outputs = [first]
  for t in range(3, 6):
    (y, cache), _ = attention.decode_step(layer, x[:, t], cache)
    outputs.append(y[:, None])
  return jnp.concatenate(outputs, axis=1)


@pytest.mark.slow  # compiles the model on three meshes: `pytest -m slow`
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_decoding_equals_one_device(kind: str) -> None:
  x = jnp.linspace(-1.0, 1.0, 8 * 6 * 32).reshape(8, 6, 32)
  want = jax.jit(_decode)(reference_params(), x)
  mesh, params, _ = _on(kind)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None, None)))
    got = jax.jit(_decode)(params, xs)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_constrain_reshards_on_explicit_axes_and_constrains_on_auto_ones() -> None:
  rules: Any = (("batch", "data"), ("mlp", "model"))
  x = jnp.ones((8, 4))
  for kind, how in (("explicit", "reshard"), ("auto", "constraint")):
    mesh = parallel.make_mesh((4, 2), ("data", "model"), axis_types=KINDS[kind])
    assert parallel.constraint_kind(mesh, ("batch", "mlp"), rules) == how
    with jax.set_mesh(mesh):
      y = jax.jit(lambda v: parallel.constrain(v * 2, ("batch", "mlp"), mesh, rules))(x)
    assert y.sharding.spec == P("data", "model")
  mixed = parallel.make_mesh((4, 2), ("data", "model"),
                             axis_types=(AxisType.Explicit, AxisType.Auto))
  assert parallel.constraint_kind(mixed, ("batch", "mlp"), rules) == "reshard+constraint"
