"""Every layer's errors start with its `Module.where()` label: `Type 'path/to/node'`."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import pytest

from blox.graph import Graph
from blox.nn import (
    GRU,
    LSTM,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dropout,
    Embed,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    RMSNorm,
    Rng,
    Sequential,
)
from blox.params import Params

# Each misuse gets the layer's node `errors/layer` and a seeded stream; it must raise.
Misuse = Callable[[Graph, Rng, Params], object]

_CASES: list[tuple[str, Misuse]] = [
    ("Linear", lambda g, rng, p: Linear(g, 0, rng=rng)),
    ("Linear", lambda g, rng, p: Linear(g, 2, rng=rng)(p, jnp.ones(()))),
    ("Conv", lambda g, rng, p: Conv(g, kernel_size=(3,), output_size=3, rng=rng, feature_group_count=2)),
    ("ConvTranspose", lambda g, rng, p: ConvTranspose(g, kernel_size=(3,), output_size=2, rng=rng, padding="CIRCULAR")),
    ("LayerNorm", lambda g, rng, p: LayerNorm(g, epsilon=-1.0)),
    ("RMSNorm", lambda g, rng, p: RMSNorm(g)(p, jnp.ones(()))),
    ("BatchNorm", lambda g, rng, p: BatchNorm(g, momentum=2.0)),
    ("Embed", lambda g, rng, p: Embed(g, 4, 3, rng=rng)(p, jnp.ones((2,)))),
    ("Dropout", lambda g, rng, p: Dropout(g, 1.0, rng=rng)),
    ("GRU", lambda g, rng, p: GRU(g, 0, rng=rng)),
    ("LSTM", lambda g, rng, p: LSTM(g, 2, rng=rng).apply(p, jnp.ones((2,)))),
    ("MultiHeadAttention", lambda g, rng, p: MultiHeadAttention(g, num_heads=0, rng=rng)),
    # An input of another width than the params were made for (4 heads, RoPE).
    ("MultiHeadAttention", lambda g, rng, p: (lambda mha: mha(mha(p, jnp.ones((1, 2, 8)))[1], jnp.ones((1, 2, 12))))(
        MultiHeadAttention(g, 4, rng=rng, rope_base=10000.0))),
    ("Rng", lambda g, rng, p: Rng(g).get_seed(p)),
    ("Sequential", lambda g, rng, p: Sequential(g, [3])),  # type: ignore[list-item]  # a non-callable layer is the misuse under test
]


@pytest.mark.parametrize(("type_name", "misuse"), _CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_CASES)])
def test_errors_start_with_the_module_label(type_name: str, misuse: Misuse) -> None:
  root = Graph("errors")
  rng = Rng(root.child("rng"))
  params = rng.seed(Params(), seed=0)
  with pytest.raises((ValueError, TypeError, KeyError)) as caught:
    misuse(root.child("layer"), rng, params)
  # args[0], not str(): str() of a KeyError is the repr of its message.
  message = str(caught.value.args[0])
  assert message.startswith(f"{type_name} 'errors/layer'"), message
  # What follows the label is the explanation, not another form of the path.
  assert "('errors', 'layer')" not in message
