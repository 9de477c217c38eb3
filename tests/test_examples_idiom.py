"""The examples and benchmarks write blox the way the guides do: they are what users copy.

Read from the source with `ast` (modules defined inside functions included):

- every `bx.Module` subclass declares its configuration as settings
  (`name: T = bx.setting(...)`) and writes no `__init__` of its own;
- only sizes (`int`, `tuple[int, ...]`) are positional
  (`bx.setting(kw_only=False)`); everything else, `rng` first of all, is
  keyword-only;
- no example differentiates by hand (`jax.grad`, `jax.value_and_grad`):
  `bx.value_and_grad` splits off the trainable params and carries the rest.

The real constructors are checked too, for the module classes a script
defines at its top level.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import blox as bx
from tests.scripts import ROOT

SCRIPTS = sorted([*(ROOT / "examples").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
SIZE_ANNOTATIONS = {"int", "tuple[int, ...]"}
# Scripts whose point is plain JAX next to blox: they differentiate with jax
# itself (and so do benchmarks/peers*.py, in the other libraries' ways).
PLAIN_JAX_GRADIENTS = {
    "benchmarks/lstm.py": "the hand-written LSTM it is measured against",
    "benchmarks/train_step.py": "the hand-written MLP it is measured against",
    "benchmarks/transformer.py": "the hand-written transformer it is measured against",
    "benchmarks/transformer_reference.py": "it is the hand-written transformer",
    "benchmarks/models_reference.py": "it is the hand-written Llama blox.models is measured against",
}


def is_blox_module(node: ast.ClassDef) -> bool:
  """Whether a class derives from blox's `Module` directly (not another library's)."""
  return any(ast.unparse(base) in ("bx.Module", "Module") for base in node.bases)


def setting_call(value: ast.expr | None) -> ast.Call | None:
  """The `bx.setting(...)` call a class attribute is set to, if it is one."""
  if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] == "setting":
    return value
  return None


def problems(path: Path, root: Path = ROOT) -> list[str]:
  """What in `path`'s module classes departs from the idiom, each named from `root`."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if not isinstance(node, ast.ClassDef) or not is_blox_module(node):
      continue
    where = f"{path.relative_to(root)}: {node.name}"
    for item in node.body:
      if isinstance(item, ast.FunctionDef) and item.name == "__init__":
        found.append(f"{where} writes __init__; declare its settings with bx.setting")
      if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
        continue
      call = setting_call(item.value)
      positional = call is not None and any(
          k.arg == "kw_only" and isinstance(k.value, ast.Constant) and k.value.value is False
          for k in call.keywords
      )
      annotation = ast.unparse(item.annotation)
      if positional and annotation not in SIZE_ANNOTATIONS:
        found.append(f"{where}.{item.target.id}: {annotation} is not a size; make it keyword-only")
  return found


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_modules_declare_settings_with_only_sizes_positional(path: Path) -> None:
  assert not problems(path)


def test_the_check_catches_a_hand_written_init_and_a_positional_rng(tmp_path: Path) -> None:
  bad = tmp_path / "bad.py"
  bad.write_text(
      "import blox as bx\n"
      "def build():\n"
      "  class Inner(bx.Module):\n"
      "    def __init__(self, graph, size, rng):\n"
      "      super().__init__(graph)\n"
      "  class Outer(bx.Module):\n"
      "    rng: bx.KeySource = bx.setting(kw_only=False)\n"
      "    size: int = bx.setting(kw_only=False)\n"
  )
  assert problems(bad, tmp_path) == [
      "bad.py: Inner writes __init__; declare its settings with bx.setting",
      "bad.py: Outer.rng: bx.KeySource is not a size; make it keyword-only",
  ]


BLOX_GRADIENTS = [
    path for path in SCRIPTS
    if str(path.relative_to(ROOT)) not in PLAIN_JAX_GRADIENTS and not path.name.startswith("peers")
]


@pytest.mark.parametrize(
    "path", BLOX_GRADIENTS, ids=[str(p.relative_to(ROOT)) for p in BLOX_GRADIENTS]
)
def test_no_gradient_by_hand(path: Path) -> None:
  name = str(path.relative_to(ROOT))
  calls = [
      ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text()))
      if isinstance(node, ast.Call) and ast.unparse(node.func) in ("jax.grad", "jax.value_and_grad")
  ]
  assert not calls, f"{name}: use bx.value_and_grad, not {calls}"


TOP_LEVEL = [
    ("examples.digits_mlp", "MLP"),
    ("examples.data_parallel", "MLP"),
    ("examples.sequence_lstm", "CharModel"),
    ("examples.lora_finetune", "LoRA"),
    ("examples.transformer_model", "Block"),
    ("examples.transformer_model", "LanguageModel"),
    ("benchmarks.lm", "LanguageModel"),
]


@pytest.mark.parametrize(("module", "name"), TOP_LEVEL)
def test_constructors_take_the_graph_and_sizes_by_position_and_rng_by_keyword(
    module: str, name: str
) -> None:
  cls = getattr(importlib.import_module(module), name)
  assert issubclass(cls, bx.Module)
  parameters = list(inspect.signature(cls).parameters.values())
  assert parameters[0].name == "graph"
  positional = [p.name for p in parameters[1:] if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  declared = inspect.get_annotations(cls)  # strings: the modules use `from __future__ import annotations`
  assert positional and all(declared[name] in SIZE_ANNOTATIONS for name in positional), declared
  (rng,) = [p for p in parameters if p.name == "rng"]
  assert rng.kind is inspect.Parameter.KEYWORD_ONLY
