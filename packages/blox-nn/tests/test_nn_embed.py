"""Tests of `Embed`: lookup, weight-tied `attend`, and errors."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import Embed, Rng
from blox.nn._contract import Contraction, contraction_hooks
from blox.params import SHARDING, Params

_names = itertools.count()


def _make(**kwargs: Any) -> tuple[Embed, Params]:
  graph = Graph(f"embed{next(_names)}")
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("num_embeddings", 7)
  kwargs.setdefault("output_size", 3)
  embed = Embed(graph.child("embed"), rng=rng, **kwargs)
  return embed, rng.seed(Params(), seed=0)


def _table(embed: Embed, params: Params) -> np.ndarray:
  return np.asarray(params[embed.param_path("embedding")].value)


def test_lookup_returns_rows_for_ids_of_any_shape() -> None:
  embed, params = _make()
  ids = jnp.array([[0, 6, 2], [3, 3, 1]], jnp.int32)
  y, params = embed(params, ids)
  table = _table(embed, params)
  assert table.shape == (7, 3)
  assert y.shape == (2, 3, 3)
  np.testing.assert_array_equal(y, table[np.asarray(ids)])
  scalar, same = embed(params, jnp.asarray(4, jnp.uint8))
  assert same is params
  np.testing.assert_array_equal(scalar, table[4])


def test_attend_multiplies_by_the_transposed_table() -> None:
  embed, params = _make()
  # attend alone creates the table: its shape is known up front.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3)), jnp.float32)
  logits, params = embed.attend(params, x)
  table = _table(embed, params)
  assert logits.shape == (2, 4, 7)
  np.testing.assert_allclose(logits, np.asarray(x) @ table.T, rtol=1e-5, atol=1e-6)
  # Tied weights: a row's own score is its squared norm.
  vectors, _ = embed(params, jnp.arange(7))
  self_scores, _ = embed.attend(params, vectors)
  np.testing.assert_allclose(jnp.diagonal(self_scores), (table**2).sum(-1), rtol=1e-5)


def test_default_init_scale_and_metadata() -> None:
  embed, params = _make(num_embeddings=512, output_size=16,
                        embedding_metadata={SHARDING: ("model", None)})
  _, params = embed(params, jnp.zeros((), jnp.int32))
  table = _table(embed, params)
  assert abs(table.std() - 0.25) < 0.03  # 1 / sqrt(16)
  assert params[embed.param_path("embedding")].sharding == ("model", None)
  custom, params = _make(embedding_init=jax.nn.initializers.ones)
  _, params = custom(params, jnp.zeros((), jnp.int32))
  np.testing.assert_array_equal(_table(custom, params), np.ones((7, 3)))


def test_out_of_range_ids_give_nan_rows() -> None:
  embed, params = _make()
  y, _ = embed(params, jnp.array([1, 7]))
  assert not np.isnan(y[0]).any() and np.isnan(y[1]).all()


def test_embed_errors() -> None:
  embed, params = _make()
  with pytest.raises(TypeError, match=r"Embed 'embed\d+/embed' looks up integer ids, got dtype float32"):
    embed(params, jnp.array([1.0, 2.0]))
  with pytest.raises(TypeError, match="integer ids, got dtype bool"):
    embed(params, jnp.array([True]))
  with pytest.raises(ValueError, match=r"attend needs inputs whose last axis is output_size=3"):
    embed.attend(params, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r"Embed 'bad/e': num_embeddings must be a positive int"):
    Embed(Graph("bad").child("e"), num_embeddings=0, output_size=2, rng=Rng(Graph("r").child("r")))
  with pytest.raises(ValueError, match=r"Embed 'bad/f': output_size must be a positive int, got True"):
    Embed(Graph("bad").child("f"), num_embeddings=3, output_size=True, rng=Rng(Graph("r").child("r")))


@pytest.mark.parametrize("method", ["lookup", "attend"])
def test_embed_under_jit_grad_vmap(method: str) -> None:
  embed, params = _make()
  if method == "lookup":
    apply: Any = embed
    x: jax.Array = jnp.array([[1, 2], [5, 1]])
    other = jnp.array([[0, 0], [6, 3]])
  else:
    apply = embed.attend
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)), jnp.float32)
    other = -2 * x
  y, params = apply(params, x)
  params = params.locked()
  y_jit, _ = jax.jit(apply)(params, x)
  np.testing.assert_allclose(y_jit, y, rtol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(apply(p, x)[0] ** 2))(params.split()[0])
  assert set(grads) == {embed.param_path("embedding")}
  assert bool(jnp.any(grads[embed.param_path("embedding")].value != 0))
  ys, _ = jax.vmap(apply, in_axes=(None, 0), out_axes=(0, None))(params, jnp.stack([x, other]))
  np.testing.assert_allclose(ys[0], y, rtol=1e-6)
  np.testing.assert_allclose(ys[1], apply(params, other)[0], rtol=1e-6)


def test_signature_lists_sizes_by_position_and_the_rest_by_keyword() -> None:
  parameters = inspect.signature(Embed).parameters
  kinds = {name: p.kind for name, p in parameters.items()}
  assert [n for n, k in kinds.items() if k is inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
      "graph", "num_embeddings", "output_size"]
  assert [n for n, k in kinds.items() if k is inspect.Parameter.KEYWORD_ONLY] == [
      "rng", "embedding_init", "embedding_metadata", "precision", "param_dtype", "dtype"]
  assert parameters["rng"].default is inspect.Parameter.empty
  with pytest.raises(TypeError, match="unexpected keyword argument 'embedding_size'"):
    Embed(Graph("old").child("e"), 4, 3, embedding_size=3, rng=Rng(Graph("r").child("r")))  # type: ignore[call-arg]  # the old name


def test_repr_and_config_follow_a_changed_setting() -> None:
  embed, params = _make()
  name = embed.graph.path[0]
  assert repr(embed) == f"Embed(num_embeddings=7, output_size=3, rng=Rng@{name}/rng)"
  embed.precision = jax.lax.Precision.HIGHEST
  assert embed.config["precision"] == jax.lax.Precision.HIGHEST
  assert "precision=" in repr(embed)
  jaxpr = str(jax.make_jaxpr(lambda p: embed.attend(p, jnp.ones((2, 3)))[0])(params))
  assert "Precision.HIGHEST" in jaxpr


def test_attend_goes_through_contract_and_the_lookup_does_not() -> None:
  embed, params = _make()
  seen: list[Contraction] = []

  def hook(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append(contraction)
    return contraction.compute(inputs, weight)

  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3)), jnp.float32)
  logits, params = embed.attend(params, x)
  with contraction_hooks(hook):
    vectors, _ = embed(params, jnp.array([1, 2]))
    assert seen == []  # a lookup is a gather, no product
    hooked, _ = embed.attend(params, x)
  np.testing.assert_array_equal(hooked, logits)
  (contraction,) = seen
  assert contraction.module is embed and contraction.weight_name == ("embedding",)
  assert contraction.weight_path() == embed.param_path("embedding")
  assert contraction.equation == "...d,nd->...n"
  assert vectors.shape == (2, 3)


def test_an_instance_rows_method_replaces_that_objects_lookup_only() -> None:
  embed, params = _make(dtype=jnp.float16)
  other, _ = _make()
  ids = jnp.array([[1, 6], [0, 7]])
  vectors, params = embed(params, ids)
  rows, _ = embed.rows(params, ids)
  # __call__ is the rows, cast: the same bits as before the seam existed.
  np.testing.assert_array_equal(vectors, rows.astype(jnp.float16))
  assert rows.dtype == jnp.float32 and bool(jnp.isnan(rows[1, 1]).all())

  def doubled(params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    rows, params = type(embed).rows(embed, params, ids)
    return 2 * rows, params

  embed.__dict__["rows"] = doubled
  np.testing.assert_array_equal(embed(params, ids)[0], 2 * vectors)
  assert "rows" not in other.__dict__
