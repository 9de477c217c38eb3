"""`Policy`: the mixed-precision dtypes a graph node asks its modules to use.

A policy has three fields, each a dtype or None ("no opinion"):
`param_dtype` (the dtype params are created in), `compute_dtype` (the dtype
a layer computes in) and `output_dtype` (the dtype a layer's outputs are cast
to). Set one on a graph node, `Graph('net', policy=...)` or
`graph.child('block', policy=...)`; a module reads its effective policy with
`Module.policy()`: field by field, the nearest value that is not None on its
node or the node's ancestors. So a child node can override one field and
inherit the others.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph, Policy
  >>> net = Graph('net', policy=Policy(compute_dtype=jnp.bfloat16))
  >>> head = net.child('head', policy=Policy(compute_dtype=jnp.float32))
  >>> net.policy.compute_dtype, head.policy.compute_dtype
  (dtype(bfloat16), dtype('float32'))
  >>> effective_policy(head.child('out')).compute_dtype
  dtype('float32')
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

if TYPE_CHECKING:
  from blox.graph._graph import Graph

__all__ = ["Policy", "check_policy", "effective_policy"]

_FIELDS = ("param_dtype", "compute_dtype", "output_dtype")


def _canonical(value: Any, field: str) -> Any:
  """`value` as a floating `jnp.dtype`, or None; raises for anything else."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError as error:
    raise TypeError(
        f"Policy: {field} must be a dtype such as jnp.bfloat16 or None, got"
        f" {value!r} ({error})."
    ) from error
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"Policy: {field} must be a floating dtype (e.g. jnp.float32, jnp.bfloat16),"
        f" got {dtype}; params, computations and outputs of layers are floating point."
    )
  return dtype


@dataclasses.dataclass(frozen=True)
class Policy:
  """The dtypes a graph node asks its modules for; None leaves a field open.

  Fields are canonicalised with `jnp.dtype` (so `jnp.bfloat16`, `'bfloat16'`
  and `jnp.dtype('bfloat16')` give equal policies) and must be floating
  dtypes.

  Attributes:
    param_dtype: the dtype in which layers create their params (blox.nn
      layers default to float32).
    compute_dtype: the dtype in which layers compute (blox.nn layers default
      to their inputs' dtype promoted with their params'). Numerically
      sensitive reductions (normalisation statistics, softmax, losses) still
      accumulate in float32.
    output_dtype: the dtype to which layers cast their outputs (blox.nn
      layers default to the compute dtype).

  Example: params stored in float32, computation in bfloat16.
    >>> import jax.numpy as jnp
    >>> policy = Policy(param_dtype=jnp.float32, compute_dtype='bfloat16')
    >>> policy
    Policy(param_dtype=float32, compute_dtype=bfloat16, output_dtype=None)
    >>> policy.merged_over(Policy(output_dtype=jnp.float32)).output_dtype
    dtype('float32')
  """

  param_dtype: Any = None
  compute_dtype: Any = None
  output_dtype: Any = None

  def __post_init__(self) -> None:
    for field in _FIELDS:
      # A frozen dataclass refuses plain assignment, also in its own methods.
      object.__setattr__(self, field, _canonical(getattr(self, field), field))

  def merged_over(self, inherited: Policy) -> Policy:
    """This policy with each None field taken from `inherited`."""
    return Policy(**{
        field: getattr(inherited, field) if getattr(self, field) is None else getattr(self, field)
        for field in _FIELDS
    })

  def __repr__(self) -> str:
    fields = ", ".join(
        f"{field}={None if getattr(self, field) is None else getattr(self, field).name}"
        for field in _FIELDS
    )
    return f"Policy({fields})"


def check_policy(policy: object, node: str) -> Policy | None:
  """`policy` if it is a `Policy` or None; raises TypeError naming the node otherwise."""
  if policy is None or isinstance(policy, Policy):
    return policy
  raise TypeError(
      f"Graph node {node!r}: policy must be a blox Policy or None, got"
      f" {type(policy).__name__}; write e.g. policy=Policy(compute_dtype=jnp.bfloat16)."
  )


def effective_policy(node: Graph) -> Policy:
  """The policy in force at `node`: field by field, the nearest value that is
  not None on `node` or its ancestors (all None where no node has one)."""
  policy = Policy()
  current: Graph | None = node
  while current is not None:
    if current.policy is not None:
      policy = policy.merged_over(current.policy)
    current = current.parent
  return policy
