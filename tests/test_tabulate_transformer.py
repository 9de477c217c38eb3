"""`bx.tabulate` on the example transformer (FAST sizes) fits a 100-column terminal."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import blox as bx

ROOT = Path(__file__).resolve().parent.parent


def _example() -> Any:
  name = "transformer_lm_for_tabulate"
  spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "transformer_lm.py")
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the file runs
  spec.loader.exec_module(module)
  return module


def test_tabulate_the_fast_transformer() -> None:
  example = _example()
  model, init = example.build(example.FAST, 65)
  params = jax.eval_shape(init)
  ids = jax.eval_shape(lambda: jnp.zeros((16, 32), jnp.int32))
  table = bx.tabulate(model, params, ids)
  lines = table.splitlines()
  assert max(len(line) for line in lines) <= 100, table
  layer = [cells for _, cells in table.rows if cells[0].startswith("layer x2  Block(")]
  assert len(layer) == 1 and layer[0][1] == layer[0][2] == "bf16[16,32,32]"
  assert layer[0][3] == "bf16"  # the policy's compute dtype
  calls, whole = table.footer
  # Every param but the Rng's seed and counter, which a forward pass never reads.
  used = [cells for depth, cells in bx.summary(params).rows if depth == 0 and cells[0] != "lm/rng"]
  assert [sum(int(cells[i].replace(",", "")) for cells in used) for i in (4, 5)] == [
      int(calls[1][i].replace(",", "")) for i in (4, 5)]
  analysis: Any = jax.jit(lambda p, i: model(p, i)[0]).lower(params, ids).compile().cost_analysis()
  assert int(whole[1][6].replace(",", "")) == int(analysis["flops"])
