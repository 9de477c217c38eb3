"""A PEFT LoRA adapter fixture for blox-models: `tests/fixtures/llama_lora/`.

`blox.models.load_lora` must run adapters that PEFT trained, and
`save_lora` must write adapters PEFT runs. CI has no torch or peft, so this
script, run by hand where torch, transformers and peft are installed (the
interop environment of tests/fixtures/README.md), writes what PEFT makes of
the committed Llama fixture:

- `adapter_config.json` and `adapter_model.safetensors`, as
  `PeftModel.save_pretrained` writes them: rank 4, alpha 8, on q_proj,
  v_proj, o_proj and down_proj, every lora_A and lora_B re-drawn normal(0,
  0.2) from torch seed 0 (PEFT starts B at zero, which would hide a wrong
  layout);
- `reference.npz`: `logits` float32 [2, 16, vocab] of the adapted model on
  the Llama fixture's `input_ids` and `attention_mask`, and the versions.

`peft_logits(base_folder, adapter_folder, ids, mask)` computes the same for
any adapter folder, e.g. one that `save_lora` wrote.

Usage (never in CI; torch, transformers and peft are imported only when it runs):
  python scripts/make_lora_fixtures.py [--out DIR]
  python scripts/make_lora_fixtures.py --check-blox [FAMILY ...]   # blox's save_lora, run by PEFT

>>> TARGETS
('q_proj', 'v_proj', 'o_proj', 'down_proj')
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TARGETS", "check_blox_save", "main", "peft_logits", "write_fixture"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "packages" / "blox-models" / "tests" / "fixtures"
TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")
RANK, ALPHA = 4, 8


def _base_model(base_folder: pathlib.Path) -> Any:
  import transformers

  return transformers.AutoModelForCausalLM.from_pretrained(
      base_folder, dtype="float32", attn_implementation="eager").eval()


def peft_logits(
    base_folder: pathlib.Path, adapter_folder: pathlib.Path, ids: npt.NDArray[np.int32],
    mask: npt.NDArray[np.int32],
) -> npt.NDArray[np.float32]:
  """The logits of the base model in `base_folder` with the PEFT adapter in `adapter_folder`."""
  import peft
  import torch

  model = peft.PeftModel.from_pretrained(_base_model(base_folder), adapter_folder).eval()
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(mask.astype(np.int64))).logits
  return np.asarray(logits.float().numpy(), np.float32)


def write_fixture(out: pathlib.Path) -> None:
  """Makes the adapter with peft and writes it and its reference logits to `out`."""
  import peft
  import torch
  import transformers

  base_folder = FIXTURES / "llama"
  torch.manual_seed(0)
  config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS),
                           lora_dropout=0.0, task_type="CAUSAL_LM")
  model = peft.get_peft_model(_base_model(base_folder), config)
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if "lora_" in name:
        parameter.copy_(torch.randn(parameter.shape) * 0.2)
  # Recorded in the config; this machine's absolute path would mean nothing elsewhere.
  model.peft_config["default"].base_model_name_or_path = "packages/blox-models/tests/fixtures/llama"
  out.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(out)
  (out / "README.md").unlink(missing_ok=True)  # peft's model card template, not needed
  with np.load(base_folder / "reference.npz") as data:
    ids, mask = data["input_ids"], data["attention_mask"]
  logits = peft_logits(base_folder, out, ids, mask)
  np.savez(out / "reference.npz", input_ids=ids, attention_mask=mask, logits=logits,
           peft_version=np.asarray(peft.__version__),
           transformers_version=np.asarray(transformers.__version__))
  print(f"wrote {out}: logits {logits.shape}, peft {peft.__version__}")


def check_blox_save(family: str = "llama", tolerance: float = 1e-4) -> float:
  """Adapts the fixture of `family` in blox (random B), saves it with `save_lora`,
  runs it with PEFT and returns the largest logit difference; fails past `tolerance`."""
  import jax
  import jax.numpy as jnp

  import blox.models as models

  base_folder = FIXTURES / family
  model, params = models.load_pretrained(base_folder)
  model, params = models.add_lora(model, params, targets=r".*(query|value|out)|.*mlp/down",
                                  rank=RANK, alpha=ALPHA)
  key = jax.random.key(1)
  entries = {path: param for path, param in params.items()}
  for index, (path, param) in enumerate(entries.items()):
    if path[-1] == "lora_b":
      value = 0.2 * jax.random.normal(jax.random.fold_in(key, index), param.value.shape)
      entries[path] = param.replace(value=value)
  params = type(params)(entries, locked=True)
  with np.load(base_folder / "reference.npz") as data:
    ids, mask = data["input_ids"], data["attention_mask"]
  ours, _ = model(params, jnp.asarray(ids), mask=jnp.asarray(mask))
  with tempfile.TemporaryDirectory() as folder:
    models.save_lora(model, params, folder)
    theirs = peft_logits(base_folder, pathlib.Path(folder), ids, mask)
  real = mask.astype(bool)
  difference = float(np.abs(np.asarray(ours)[real] - theirs[real]).max())
  print(f"{family}: blox save_lora -> PEFT: max |logits difference| {difference:.2e}")
  if difference > tolerance:
    raise SystemExit(f"blox and PEFT differ by {difference} > {tolerance}")
  return difference


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, default=FIXTURES / "llama_lora")
  parser.add_argument("--check-blox", nargs="*", metavar="FAMILY",
                      help="check that PEFT runs what blox's save_lora writes (default: llama)")
  args = parser.parse_args(argv)
  if args.check_blox is not None:
    for family in args.check_blox or ["llama"]:
      check_blox_save(family)
  else:
    write_fixture(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
