"""`Params._repr_html_`: the rich display in notebooks; never a value, always escaped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blox.params import SHARDING, Param, Params


def test_html_shows_paths_shapes_sizes_and_shardings_but_no_values() -> None:
  params = Params({
      ("net", "dense", "kernel"): Param(jnp.full((3, 4), 1234.5678), metadata={SHARDING: ("embed", None)}),
      ("net", "norm", "mean"): Param(jnp.full((4,), 8765.4321), trainable=False),
  })
  page = params._repr_html_()
  assert page.startswith("<table><caption>Params: 2 params, unlocked</caption>")
  assert "<td>net/dense/kernel</td><td>[3, 4]</td><td>float32</td><td>yes</td><td>12</td><td>48</td><td>embed,-</td>" in page
  assert "<td>net/norm/mean</td><td>[4]</td><td>float32</td><td>no</td><td>4</td><td>16</td><td></td>" in page
  assert "<td>total</td><td></td><td></td><td></td><td>16</td><td>64</td>" in page
  assert "1234" not in page and "8765" not in page
  # The plain-text repr is what it was.
  assert repr(params).startswith("Params(locked=False, 2 params):")


def test_html_escapes_every_piece_of_text() -> None:
  params = Params({("<b>net</b>", "w&v"): Param(jnp.ones(2), metadata={SHARDING: ("<i>",)})}).locked()
  page = params._repr_html_()
  assert "<b>" not in page and "<i>" not in page
  assert "&lt;b&gt;net&lt;/b&gt;/w&amp;v" in page and "&lt;i&gt;" in page and "locked" in page


def test_html_of_abstract_params_and_keys() -> None:
  params = jax.eval_shape(lambda: Params({("k",): Param(jax.random.key(0)), ("w",): Param(jnp.ones(3))}))
  page = params._repr_html_()
  assert "<td>k</td><td>[]</td>" in page and "<td>2</td><td>8</td>" in page  # the key's two words
  assert "sharding" not in page
