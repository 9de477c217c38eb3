"""Tests of the sharding column of `blox.graph.summary`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from blox.graph import Graph, summary
from blox.params import SHARDING, STACKED, Param, Params

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec
# So has jax.ShapeDtypeStruct's.
_abstract: Callable[..., Any] = jax.ShapeDtypeStruct

EMBED = ("net", "embed", "table")
KERNEL = ("net", "mlp", "kernel")
BIAS = ("net", "mlp", "bias")
BLOCKS = ("net", "blocks", "kernel")
SCALE = ("net", "norm", "scale")


def sharded_params() -> Params:
  return Params({
      EMBED: Param(jnp.zeros((16, 6)), metadata={SHARDING: ("vocab", "embed")}),
      KERNEL: Param(jnp.zeros((6, 8)), metadata={SHARDING: ("embed", "mlp")}),
      BIAS: Param(jnp.zeros(8), metadata={SHARDING: "mlp"}),
      BLOCKS: Param(jnp.zeros((3, 6, 8)), metadata={STACKED: (3,), SHARDING: (None, ("data", "model"))}),
      SCALE: Param(jnp.zeros(6)),
  })


def shardings_for(params: Params, specs: dict[Any, PartitionSpec]) -> Params:
  """What blox.parallel.param_shardings returns (built here: blox-graph does not depend on it)."""
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  return params.map(lambda path, _: NamedSharding(mesh, specs.get(path, P())))


SPECS = {
    EMBED: P(("data", "model"), None), KERNEL: P(None, "model"), BIAS: P("model"),
    BLOCKS: P(None, None, ("data", "model")),
}


def test_the_column_shows_the_sharding_metadata() -> None:
  assert summary(sharded_params()) == "\n".join([
      "5 params in 4 modules, unlocked",
      "module / param  shape      dtype    train  count  bytes  sharding",
      "-" * 71,
      "net/embed                                     96    384",
      "  table         [16, 6]    float32  yes       96    384  vocab,embed",
      "net/mlp                                       56    224",
      "  kernel        [6, 8]     float32  yes       48    192  embed,mlp",
      "  bias          [8]        float32  yes        8     32  mlp",
      "net/blocks                                   144    576",
      "  kernel        [3, 6, 8]  float32  yes      144    576  -,(data,model)",
      "net/norm                                       6     24",
      "  scale         [6]        float32  yes        6     24",
      "-" * 71,
      "trainable                                    302  1,208",
      "non-trainable                                  0      0",
      "total                                        302  1,208",
      "size: 1.2 KiB (trainable 1.2 KiB, non-trainable 0 B)",
  ])


def test_with_shardings_the_column_shows_the_resolved_mesh_axes() -> None:
  params = sharded_params()
  table = summary(params, shardings=shardings_for(params, SPECS))
  rows = {line.split()[0]: line for line in table.splitlines()[3:]}
  assert rows["table"].endswith("  vocab,embed -> (data,model),-")
  assert rows["bias"].endswith("  mlp -> model")
  assert table.splitlines()[1].endswith("  sharding")
  lines = table.splitlines()
  kernels = [line for line in lines if line.split()[0] == "kernel"]
  assert kernels[0].endswith("  embed,mlp -> -,model")
  # A stacked param's leading layer axis is unsharded.
  assert kernels[1].endswith("  -,(data,model) -> -,-,(data,model)")
  # A replicated param without metadata shows nothing.
  assert rows["scale"].endswith("  24")


def test_a_param_without_metadata_but_sharded_shows_its_spec() -> None:
  params = Params({("net", "w"): Param(jnp.zeros((8, 2)))})
  table = summary(params, shardings=shardings_for(params, {("net", "w"): P("data")}))
  assert table.splitlines()[4].endswith("  -> data")
  # Metadata mapped to nothing by the rules shows up as replicated.
  params = Params({("net", "w"): Param(jnp.zeros((8, 2)), metadata={SHARDING: ("embed",)})})
  table = summary(params, shardings=shardings_for(params, {("net", "w"): P(None)}))
  assert table.splitlines()[4].endswith("  embed -> -")
  table = summary(params, shardings=shardings_for(params, {}))
  assert table.splitlines()[4].endswith("  embed -> replicated")


def test_tables_without_sharding_metadata_have_no_column() -> None:
  params = Params({("net", "w"): Param(jnp.zeros((8, 2)))})
  assert "sharding" not in summary(params)
  # Replicated shardings add nothing either.
  assert summary(params, shardings=shardings_for(params, {})) == summary(params)


def test_20_sharded_layers_fit_100_columns() -> None:
  graph = Graph("model")
  layers = graph.child("transformer").child("layers")
  entries = {}
  for i in range(20):
    for name, shape, axes in (
        ("query/kernel", (1024, 16, 64), ("embed", "heads", "head_dim")),
        ("mlp/up/kernel", (1024, 4096), ("embed", "mlp")),
        ("mlp/up/bias", (4096,), ("mlp",)),
    ):
      path = ("model", "transformer", "layers", f"layer_{i}", *name.split("/"))
      entries[path] = Param(_abstract(shape, jnp.float32), metadata={SHARDING: axes})
  params = Params(entries)
  specs = {
      path: P(*({"embed": "data", "mlp": "model", "heads": "model"}.get(a) for a in p.sharding))
      for path, p in params.items()
  }
  for table in (summary(params, graph), summary(params, graph, shardings=shardings_for(params, specs))):
    assert max(len(line) for line in table.splitlines()) <= 100
  rows = [line for line in table.splitlines() if line.startswith("  ")]
  assert len(rows) == 60
  assert all(row.endswith("  embed,mlp -> data,model") for row in rows[1::3])
  assert all(row.endswith("  mlp -> model") for row in rows[2::3])
  # Too long for the room left: cut, visibly.
  assert all(row.endswith("  embed,heads,head_dim -> d...") for row in rows[0::3])


def test_bad_shardings_are_refused() -> None:
  params = sharded_params()
  with pytest.raises(TypeError, match="shardings must be a Params of NamedShardings, got dict"):
    summary(params, shardings={})  # type: ignore[arg-type]  # the misuse under test
  partial = shardings_for(Params({EMBED: params[EMBED]}), {})
  with pytest.raises(ValueError, match=r"no entry for the param \('net', 'mlp', 'kernel'\).*param_shardings"):
    summary(params, shardings=partial)
  wrong = params.map(lambda path, p: "data")
  with pytest.raises(ValueError, match=r"\('net', 'embed', 'table'\) is str, not a NamedSharding"):
    summary(params, shardings=wrong)
