"""`Embed`: a lookup table from integer ids to vectors, with weight tying.

`embed(params, ids)` returns one row of the table per id; `embed.attend(params,
x)` multiplies by the transposed table, turning vectors back into one score
per id (the output layer of a language model that shares its input table).

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('lm')
  >>> rng = Rng(graph.child('rng'))
  >>> embed = Embed(graph.child('embed'), num_embeddings=10, embedding_size=4, rng=rng)
  >>> vectors, params = embed(rng.seed(Params(), seed=0), jnp.array([[1, 2, 3]]))
  >>> logits, params = embed.attend(params, vectors)
  >>> vectors.shape, logits.shape
  ((1, 3, 4), (1, 3, 10))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module
from blox.nn._checks import check_float_inputs, check_positive_int
from blox.nn._precision import (
    Dtypes,
    check_dtype,
    float32_init,
    resolve_dtypes,
    to_compute,
    to_output,
)
from blox.nn.initializers import variance_scaling
from blox.params import Initializer, KeySource, Params

__all__ = ["Embed"]


class Embed(Module):
  """An embedding table of shape `(num_embeddings, embedding_size)`.

  The table's shape is known up front, so `attend` works even before any
  lookup has created it.

  Ids at or above `num_embeddings` look up rows of NaN, so the mistake shows
  in the outputs instead of silently reading another row; negative ids count
  from the end, as in NumPy indexing. (Checking ids eagerly is impossible
  under `jax.jit`, where they are abstract.)

  Args:
    graph: the node this layer binds to.
    num_embeddings: the number of rows (the vocabulary size).
    embedding_size: the length of each row.
    rng: the key source for initialisation.
    embedding_init: the table's initializer; by default a (truncated) normal
      with standard deviation `1 / sqrt(embedding_size)`, which keeps both the
      looked-up vectors and `attend` scores of unit-scale inputs near unit scale.
    embedding_metadata: metadata for the table, e.g. `{'sharding': ('model', None)}`.
    precision: the precision of the product in `attend` (`jax.lax.Precision`).
    param_dtype: the dtype of the table when it is created; None: the
      policy's `param_dtype` (`Module.policy()`), else float32.
    dtype: the dtype of the looked-up vectors and of `attend`'s product;
      None: the policy's `compute_dtype`, else the table's dtype for lookups
      and the inputs' dtype promoted with the table's for `attend`. Outputs
      of both come out in the policy's `output_dtype` when it has one.
  """

  def __init__(
      self,
      graph: Graph,
      num_embeddings: int,
      embedding_size: int,
      *,
      rng: KeySource,
      embedding_init: Initializer = variance_scaling(
          1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=0
      ),
      embedding_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
      param_dtype: Any = None,
      dtype: Any = None,
  ) -> None:
    super().__init__(graph)
    check_positive_int(num_embeddings, "num_embeddings", self.where())
    check_positive_int(embedding_size, "embedding_size", self.where())
    self.num_embeddings = num_embeddings
    self.embedding_size = embedding_size
    self.rng = rng
    self.embedding_init = embedding_init
    self.embedding_metadata = embedding_metadata
    self.precision = precision
    self.param_dtype = check_dtype(param_dtype, "param_dtype", self.where())
    self.dtype = check_dtype(dtype, "dtype", self.where())

  def table(self, params: Params) -> tuple[jax.Array, Params]:
    """Returns `(table, params)`, creating the table if it is missing.

    The table is returned as stored (in its param dtype), not cast.
    """
    table: jax.Array
    param_dtype = self._dtypes().param
    table, params = self.get_param(
        params, "embedding", (self.num_embeddings, self.embedding_size),
        init=float32_init(self.embedding_init, param_dtype), rng=self.rng,
        metadata=self.embedding_metadata, param_dtype=param_dtype,
    )
    return table, params

  def _dtypes(self) -> Dtypes:
    return resolve_dtypes(self, self.param_dtype, self.dtype)

  def __call__(self, params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    """Looks up `ids` (integers of any shape); outputs are `(*ids.shape, embedding_size)`.

    Raises:
      TypeError: `ids` are not integers (floats or bools).
    """
    dtype = jnp.result_type(ids)
    if not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"{self.where()} looks up integer ids, got dtype {dtype}; cast"
          " them with ids.astype(jnp.int32)."
      )
    table, params = self.table(params)
    dtypes = self._dtypes()
    # Only the rows looked up are cast, not the whole table.
    (vectors,) = to_compute(dtypes, jnp.take(table, ids, axis=0))
    return to_output(dtypes, vectors), params

  def attend(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Scores `inputs` `(..., embedding_size)` against every row: `inputs @ table.T`.

    Returns `(scores, params)` with scores of shape `(..., num_embeddings)`.
    """
    check_float_inputs(inputs, self.where())
    shape = tuple(jnp.shape(inputs))
    if not shape or shape[-1] != self.embedding_size:
      raise ValueError(
          f"{self.where()}: attend needs inputs whose last axis is"
          f" embedding_size={self.embedding_size}; got shape {shape}."
      )
    table, params = self.table(params)
    dtypes = self._dtypes()
    inputs, table = to_compute(dtypes, inputs, table)
    return to_output(dtypes, jnp.dot(inputs, table.T, precision=self.precision)), params
