"""Lookups in a quantized embedding table: gather the integer rows, then dequantize them.

A quantized `Embed` table is stored `[vocab, features]` (int8, or uint8
packing two 4-bit features per byte) with float32 scales `[vocab, groups]`
(see `_quantize_format`). `Embed.__call__` reads its rows through the
method `rows`; `quantized_rows` makes the `rows` that `quantize` gives one
`Embed` object: it gathers the ids' integer rows and their rows of scales
and dequantizes only those, never the whole table (a vocabulary is large).
Ids out of range get scales of NaN, hence rows of NaN, as a float table's
lookup gives. The tied head (`Embed.attend`) multiplies by the whole table
and goes through the contraction hook instead.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Embed, Rng
  >>> from blox.models import quantize
  >>> graph = Graph('lm')
  >>> rng = Rng(graph.child('rng'))
  >>> embed = Embed(graph.child('embed'), 6, 4, rng=rng)
  >>> rows, params = embed(rng.seed(Params(), seed=0), jnp.array([1, 5]))
  >>> embed, q = quantize(embed, params, bits=4, group_size=2)
  >>> q[('lm', 'embed', 'embedding')].value.shape, q[('lm', 'embed', 'embedding_scale')].value.shape
  ((6, 2), (6, 2))
  >>> bool(jnp.max(jnp.abs(embed(q, jnp.array([1, 5]))[0] - rows)) < 0.1)
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.models._quantize_format import dequantize, read_scales, stored_format, unpack_int4
from blox.nn import Embed
from blox.params import Params, path_text

__all__ = ["quantized_rows"]


def quantized_rows(embed: Embed) -> Any:
  """The `rows` method for `embed` that reads a quantized table (and a float
  one as the class does)."""

  def rows(params: Params, ids: jax.Array) -> tuple[jax.Array, Params]:
    path = embed.param_path("embedding")
    fmt = stored_format(params, path)
    if fmt is None:
      return type(embed).rows(embed, params, ids)
    integers: jax.Array
    # The class's get_param: no shape or dtype check (the table is stored
    # packed, in integers); the shape is checked below.
    integers, params = type(embed).get_param(embed, params, "embedding")
    scales, params = read_scales(params, path, fmt)
    features = integers.shape[-1] * (2 if fmt[0] == "int4" else 1)
    if (integers.shape[0], features) != (embed.num_embeddings, embed.output_size):
      raise ValueError(
          f"{embed.where()}: the quantized table {path_text(path)} holds {fmt[0]} rows of"
          f" shape ({integers.shape[0]}, {features}) but the layer has"
          f" ({embed.num_embeddings}, {embed.output_size}); quantize the params of this"
          " model (blox.models.quantize), not another's.")
    # Integer rows cannot hold NaN: ids out of range read 0s here and NaN
    # scales below, whose product is NaN as a float table's fill is.
    picked = embed.gather(integers, ids, fill_value=0)
    if fmt[0] == "int4":
      picked = unpack_int4(picked)
    row_scales = embed.gather(scales, ids)
    # Dequantized in float32, then rounded to the table's own dtype: the
    # rows a float table of the layer's param_dtype would have given.
    dtype = embed.dtypes().param or jnp.float32
    vectors = dequantize(picked.astype(jnp.float32), row_scales, input_axes=fmt[1])
    return vectors.astype(dtype), params

  return rows
