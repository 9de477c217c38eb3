"""Sharding of stacked params (`STACKED` metadata): the layer axes get no mesh axis."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec

from blox.params import SHARDING, STACKED, Param, Params
from blox.parallel import make_mesh, param_shardings, partition_spec

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec
PATH = ("net", "blocks", "layer", "kernel")


def mesh() -> jax.sharding.Mesh:
  return make_mesh((4, 2), ("data", "model"))


def test_one_none_per_stacked_axis_comes_first() -> None:
  one = Param(jnp.zeros((6, 3, 4)), metadata={STACKED: (6,), SHARDING: (None, "model")})
  assert partition_spec(PATH, one, mesh()) == P(None, None, "model")
  nested = Param(jnp.zeros((2, 3, 8, 4)), metadata={STACKED: (2, 3), SHARDING: ("data",)})
  assert partition_spec(PATH, nested, mesh()) == P(None, None, "data")
  replicated = Param(jnp.zeros((6, 3)), metadata={STACKED: (6,)})
  assert partition_spec(PATH, replicated, mesh()) == P()
  shardings = param_shardings(Params({PATH: one}), mesh())
  assert shardings[PATH].value.spec == P(None, None, "model")


def test_the_rank_check_counts_per_layer_dims() -> None:
  # Three entries fit the value's rank 3, but one layer has only 2 dims.
  param = Param(jnp.zeros((6, 3, 4)), metadata={STACKED: (6,), SHARDING: (None, "model", None)})
  with pytest.raises(ValueError, match=r"\('net', 'blocks', 'layer', 'kernel'\) .*first 1 are stacked layer axes.*rank 2"):
    partition_spec(PATH, param, mesh())


def test_divisibility_is_checked_on_the_per_layer_dim() -> None:
  # The stacked axis (4) would split over 'data', the layer dim (3) cannot.
  param = Param(jnp.zeros((4, 3)), metadata={STACKED: (4,), SHARDING: ("data",)})
  with pytest.raises(ValueError, match=r"dimension 1 \(size 3\) cannot be split over mesh axis 'data'"):
    partition_spec(PATH, param, mesh())


@pytest.mark.parametrize("stacked", [(5,), 6, (6.0,), (6, 3, 4, 1)])
def test_a_malformed_stacked_entry_is_refused(stacked: object) -> None:
  param = Param(jnp.zeros((6, 3, 4)), metadata={STACKED: stacked, SHARDING: ("model",)})
  with pytest.raises(ValueError, match=r"\('net', 'blocks', 'layer', 'kernel'\) has 'stacked' metadata"):
    partition_spec(PATH, param, mesh())
