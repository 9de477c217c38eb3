"""Tests of `Policy`: its fields, how graph nodes carry it, `Module.policy()`,
and the compute dtype the summary shows."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.graph import Graph, Module, Policy, summary
from blox.params import Params


class Scale(Module):
  """A user-written module that reads its precision through `self.policy()`."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    policy = self.policy()
    scale, params = self.get_param(
        params, "scale", x.shape[-1:], init=jax.nn.initializers.ones, param_dtype=policy.param_dtype
    )
    dtype = policy.compute_dtype
    if dtype is None:
      dtype = jnp.result_type(x, scale)
    y = x.astype(dtype) * scale.astype(dtype)
    if policy.output_dtype is not None:
      y = y.astype(policy.output_dtype)
    return y, params


def test_fields_are_canonical_dtypes_or_none() -> None:
  policy = Policy(param_dtype=jnp.float32, compute_dtype="bfloat16")
  assert policy.param_dtype == jnp.dtype("float32")
  assert isinstance(policy.compute_dtype, jnp.dtype)
  assert policy.compute_dtype == jnp.dtype(jnp.bfloat16)
  assert policy.output_dtype is None
  assert policy == Policy(param_dtype="float32", compute_dtype=jnp.dtype(jnp.bfloat16))
  assert hash(policy) == hash(Policy(jnp.float32, jnp.bfloat16))
  assert repr(policy) == "Policy(param_dtype=float32, compute_dtype=bfloat16, output_dtype=None)"


def test_policy_is_frozen() -> None:
  policy = Policy()
  with pytest.raises(dataclasses.FrozenInstanceError):
    policy.compute_dtype = jnp.bfloat16  # type: ignore[misc]  # the point: it refuses


@pytest.mark.parametrize("field", ["param_dtype", "compute_dtype", "output_dtype"])
def test_policy_refuses_a_non_floating_dtype(field: str) -> None:
  with pytest.raises(TypeError, match=rf"Policy: {field} must be a floating dtype.*got int32"):
    Policy(**{field: jnp.int32})


def test_policy_refuses_what_is_no_dtype() -> None:
  with pytest.raises(TypeError, match=r"Policy: compute_dtype must be a dtype such as jnp.bfloat16"):
    Policy(compute_dtype="bf16-please")


def test_graph_node_refuses_what_is_no_policy() -> None:
  with pytest.raises(TypeError, match=r"Graph node 'net': policy must be a blox Policy.*dict"):
    Graph("net", policy={"compute_dtype": jnp.bfloat16})  # type: ignore[arg-type]  # the misuse under test
  net = Graph("net")
  with pytest.raises(TypeError, match=r"Graph node 'net/head': policy must be a blox Policy"):
    net.child("head", policy=jnp.bfloat16)  # the misuse under test


def test_node_policy_is_its_own_and_module_policy_is_effective() -> None:
  root_policy = Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16)
  net = Graph("net", policy=root_policy)
  block = net.child("block")
  head = block.child("head", policy=Policy(compute_dtype=jnp.float32))
  assert net.policy is root_policy
  assert block.policy is None and head.policy == Policy(compute_dtype=jnp.float32)
  inner = Scale(block.child("inner"))
  out = Scale(head.child("out"))
  # Inherited through a node without a policy of its own.
  assert inner.policy() == root_policy
  # Overridden field by field: compute from the nearest node, params from the root.
  assert out.policy() == Policy(param_dtype=jnp.float32, compute_dtype=jnp.float32)


def test_a_child_none_field_inherits_and_a_set_field_overrides() -> None:
  net = Graph("net", policy=Policy(compute_dtype=jnp.bfloat16, output_dtype=jnp.float32))
  middle = net.child("middle", policy=Policy(param_dtype=jnp.float16))
  leaf = Scale(middle.child("leaf", policy=Policy(output_dtype=jnp.bfloat16)))
  assert leaf.policy() == Policy(
      param_dtype=jnp.float16, compute_dtype=jnp.bfloat16, output_dtype=jnp.bfloat16
  )


def test_no_policy_anywhere_is_all_none() -> None:
  assert Scale(Graph("net").child("scale")).policy() == Policy()


def test_user_module_follows_its_policy() -> None:
  net = Graph("net", policy=Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16))
  scale = Scale(net.child("scale"))
  y, params = scale(Params(), jnp.ones((2, 3)))
  assert y.dtype == jnp.bfloat16
  assert params[("net", "scale", "scale")].value.dtype == jnp.float32
  bf16_params = Scale(Graph("m", policy=Policy(param_dtype=jnp.bfloat16)).child("s"))
  y, params = bf16_params(Params(), jnp.ones(3))
  assert params[("m", "s", "scale")].value.dtype == jnp.bfloat16
  # No compute dtype: promotion of float32 inputs with bfloat16 params.
  assert y.dtype == jnp.float32
  casting = Scale(Graph("o", policy=Policy(output_dtype=jnp.float16)).child("s"))
  y, _ = casting(Params(), jnp.ones(3))
  assert y.dtype == jnp.float16


class Tagged(Scale):
  """A module storing its own compute dtype, as the blox.nn layers do."""

  def __init__(self, graph: Graph, dtype: Any = None) -> None:
    super().__init__(graph)
    self.dtype = None if dtype is None else jnp.dtype(dtype)


def test_summary_shows_the_compute_dtype_on_module_lines() -> None:
  net = Graph("net", policy=Policy(compute_dtype=jnp.bfloat16))
  plain = Scale(net.child("plain"))
  own = Tagged(net.child("own"), dtype=jnp.float16)
  params = Params()
  _, params = plain(params, jnp.ones(3))
  _, params = own(params, jnp.ones(3))
  lines = summary(params, net).splitlines()
  plain_line = next(line for line in lines if line.startswith("net/plain"))
  own_line = next(line for line in lines if line.startswith("net/own"))
  assert plain_line.split()[:3] == ["net/plain", "Scale()", "compute"]
  assert plain_line.split()[3] == "bfloat16"
  # The module's own dtype beats the policy, and repr shows it by name.
  assert own_line.split()[:5] == ["net/own", "Tagged(dtype=float16)", "compute", "float16", "3"]


def test_summary_without_policy_shows_no_compute_dtype() -> None:
  net = Graph("net")
  _, params = Scale(net.child("plain"))(Params(), jnp.ones(3))
  assert "compute" not in summary(params, net)


def test_summary_keeps_the_compute_dtype_when_the_label_is_cut() -> None:
  net = Graph("net", policy=Policy(compute_dtype=jnp.bfloat16))
  own = Tagged(net.child("a_rather_long_module_name"), dtype=jnp.bfloat16)
  _, params = own(Params(), jnp.ones(3))
  assert "Tagged(dtype=bfloat16)  compute bfloat16" in summary(params, net)
  table = summary(params, net, width=78)
  own_line = next(line for line in table.splitlines() if line.startswith("net/a_rather"))
  assert "compute bfloat16" in own_line and "  Tagged(dtype...  compute bfloat16" in own_line
  assert max(len(line) for line in table.splitlines()) <= 78
