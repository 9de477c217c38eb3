"""`Embed`: a lookup table from integer ids to vectors, with weight tying.

`embed(params, ids)` returns one row of the table per id; `embed.attend(params,
x)` multiplies by the transposed table, turning vectors back into one score
per id (the output layer of a language model that shares its input table).
The lookup is a gather (through the method `rows`, which one object may
override to read a table stored otherwise); `attend` is a product by the
table, computed through `blox.nn.contract` with the weight named
`'embedding'`.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('lm')
  >>> rng = Rng(graph.child('rng'))
  >>> embed = Embed(graph.child('embed'), 10, 4, rng=rng)
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

from blox.graph import setting
from blox.nn._checks import check_float_inputs, check_positive_int
from blox.nn._contract import contract
from blox.nn._out_sharding import gather_out_sharding
from blox.nn._layer import Layer
from blox.nn._precision import float32_init, to_compute, to_output
from blox.nn.initializers import variance_scaling
from blox.params import Initializer, KeySource, Params

__all__ = ["Embed"]


class Embed(Layer):
  """An embedding table of shape `(num_embeddings, output_size)`.

  The table's shape is known up front, so `attend` works even before any
  lookup has created it.

  Ids at or above `num_embeddings` look up rows of NaN, so the mistake shows
  in the outputs instead of silently reading another row; negative ids count
  from the end, as in NumPy indexing. (Checking ids eagerly is impossible
  under `jax.jit`, where they are abstract.)

  `dtype` is the dtype of the looked-up vectors and of `attend`'s product;
  without it (and without a policy's `compute_dtype`) lookups keep the
  table's dtype and `attend` computes in the inputs' dtype promoted with the
  table's.
  """

  num_embeddings: int = setting(
      kw_only=False, check=check_positive_int, doc="the number of rows (the vocabulary size).")
  output_size: int = setting(
      kw_only=False, check=check_positive_int, doc="the length of each row.")
  rng: KeySource = setting(doc="the key source for initialisation.")
  embedding_init: Initializer = setting(
      default=variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=0),
      doc="the table's initializer; by default a (truncated) normal with standard"
      " deviation `1 / sqrt(output_size)`, which keeps both the looked-up vectors"
      " and `attend` scores of unit-scale inputs near unit scale.",
  )
  embedding_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the table, e.g. `{'sharding': ('model', None)}`.")
  precision: jax.lax.PrecisionLike = setting(
      default=None, doc="the precision of the product in `attend` (`jax.lax.Precision`).")

  def table(self, params: Params) -> tuple[jax.Array, Params]:
    """Returns `(table, params)`, creating the table if it is missing.

    The table is returned as stored (in its param dtype), not cast.
    """
    table: jax.Array
    param_dtype = self.dtypes().param
    table, params = self.get_param(
        params, "embedding", (self.num_embeddings, self.output_size),
        init=float32_init(self.embedding_init, param_dtype), rng=self.rng,
        metadata=self.embedding_metadata, param_dtype=param_dtype,
    )
    return table, params

  def __call__(self, params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    """Looks up `ids` (integers of any shape); outputs are `(*ids.shape, output_size)`.

    Raises:
      TypeError: `ids` are not integers (floats or bools).
    """
    dtype = jnp.result_type(ids)
    if not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"{self.where()} looks up integer ids, got dtype {dtype}; cast"
          " them with ids.astype(jnp.int32)."
      )
    rows, params = self.rows(params, ids)
    dtypes = self.dtypes()
    # Only the rows looked up are cast, not the whole table.
    (vectors,) = to_compute(dtypes, rows)
    return to_output(dtypes, vectors), params

  def rows(self, params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    """The table's rows for integer `ids`, as stored (not cast): `(rows, params)`
    with rows `(*ids.shape, output_size)`, NaN rows for ids out of range.

    `__call__` gathers through this method and casts what it returns. It is
    the lookup's seam: a table stored in another format (quantized integers
    and scales, say) is read by giving one `Embed` object its own `rows`,
    as an instance attribute (Python finds `__call__` on the class, so that
    cannot be replaced on one object).

    Example:
      >>> from blox.graph import Graph
      >>> from blox.nn import Rng
      >>> graph = Graph('lm')
      >>> rng = Rng(graph.child('rng'))
      >>> embed = Embed(graph.child('embed'), 4, 2, rng=rng)
      >>> rows, params = embed.rows(rng.seed(Params(), seed=0), jnp.array([0, 4]))
      >>> rows.shape, bool(jnp.isnan(rows[1]).all())
      ((2, 2), True)
    """
    table, params = self.table(params)
    return self.gather(table, ids), params

  @staticmethod
  def gather(table: jax.Array, ids: jax.Array, *, fill_value: Any = jnp.nan) -> jax.Array:
    """`table[ids]` for a 2-D array laid out like a table (one row per id):
    rows `(*ids.shape, table.shape[1])`, `fill_value` for ids out of range.

    The gather `rows` does, for a `rows` of another format to reuse (its
    integer rows, their scales). On Explicit mesh axes it says the rows'
    sharding, as a gather there must.

    Example:
      >>> Embed.gather(jnp.array([[1, 2], [3, 4]]), jnp.array([1, 2]), fill_value=0).tolist()
      [[3, 4], [0, 0]]
    """
    # On Explicit mesh axes the rows' sharding must be said (the ids' batch
    # sharding, then the table's features'); None elsewhere: a plain take.
    rows: jax.Array = table.at[ids].get(
        out_sharding=gather_out_sharding(table, ids), mode="fill", fill_value=fill_value)
    return rows

  def attend(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Scores `inputs` `(..., output_size)` against every row: `inputs @ table.T`.

    Returns `(scores, params)` with scores of shape `(..., num_embeddings)`.
    """
    check_float_inputs(inputs, self.where())
    shape = tuple(jnp.shape(inputs))
    if not shape or shape[-1] != self.output_size:
      raise ValueError(
          f"{self.where()}: attend needs inputs whose last axis is"
          f" output_size={self.output_size}; got shape {shape}."
      )
    table, params = self.table(params)
    dtypes = self.dtypes()
    inputs, table = to_compute(dtypes, inputs, table)
    scores = contract(
        inputs, table, "...d,nd->...n", module=self, params=params,
        weight_name="embedding", precision=self.precision,
    )
    return to_output(dtypes, scores), params
