"""Every family against `transformers` itself, live: needs the interop group (torch).

test_models_families.py compares blox with the references committed beside
each fixture; these tests recompute what `transformers` makes of

- the folder blox writes (`save_pretrained` of the loaded fixture): its
  logits on the padded batch must be blox's, within float32 noise, and its
  greedy decoding blox's, token for token;
- the committed fixture folder: its outputs must still be the committed
  `reference.npz` (as `scripts/make_model_fixtures.py --check` does), so the
  references the other tests trust are what this `transformers` computes.

Without torch and transformers every test here is skipped with the command
that installs them. scripts/make_model_fixtures.py imports both only when
its functions run, so importing it here costs nothing.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_fixtures import (
    FAMILIES, INTEROP_SYNC, fixture_folder, greedy_tokens, interop_available, load_reference,
)

import blox.models as bm
from blox.params import Params
from scripts.make_model_fixtures import CHECK_LOGITS_ATOL, NEW_TOKENS, transformers_outputs

pytestmark = pytest.mark.skipif(
    not interop_available(),
    reason=f"compares with torch and transformers live; install them with `{INTEROP_SYNC}`",
)

# transformers' float32 logits against blox's (as in test_models_families.py).
LOGITS_ATOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_computes_blox_outputs_from_the_folder_blox_saved(
    family: str, tmp_path: pathlib.Path
) -> None:
  model, params = bm.load_pretrained(fixture_folder(family))
  reference = load_reference(family)
  bm.save_pretrained(model, params, tmp_path)
  theirs = transformers_outputs(
      tmp_path, reference.input_ids, reference.attention_mask, reference.prompt_ids)

  logits, _ = jax.jit(lambda p, ids, mask: model(p, ids, mask=mask))(
      params, reference.input_ids, reference.attention_mask)
  real = reference.attention_mask.astype(bool)  # padded positions' logits mean nothing
  difference = np.abs(np.asarray(logits) - theirs["logits"])[real]
  assert difference.max() < LOGITS_ATOL, (family, float(difference.max()))
  tokens = greedy_tokens(model, params, reference.prompt_ids, NEW_TOKENS)
  np.testing.assert_array_equal(tokens, theirs["greedy_tokens"])


@pytest.mark.parametrize("family", FAMILIES)
def test_committed_reference_is_what_transformers_computes_now(family: str) -> None:
  reference = load_reference(family)
  fresh = transformers_outputs(
      fixture_folder(family), reference.input_ids, reference.attention_mask,
      reference.prompt_ids)
  np.testing.assert_allclose(fresh["logits"], reference.logits, rtol=0, atol=CHECK_LOGITS_ATOL)
  np.testing.assert_array_equal(fresh["greedy_tokens"], reference.greedy_tokens)
