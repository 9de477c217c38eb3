"""`SHARDING_RULES`: logical-axis rules for the pretrained families on a ('data', 'model') mesh.

Fully sharded data parallelism over 'data' (every weight's 'embed' axis and
the batch) with tensor parallelism over 'model' (heads, key/value heads, MLP
units, vocabulary); head_dim is never split. Pass them (or your own) to
`load_pretrained(..., mesh=mesh, rules=SHARDING_RULES)`.

Example:
  >>> dict(SHARDING_RULES)['heads']
  'model'
"""

from __future__ import annotations

__all__ = ["SHARDING_RULES"]

SHARDING_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("embed", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("head_dim", None),
)
