"""`load_pretrained` refuses what it cannot load exactly, with messages that say what to do.

Each test copies a committed fixture folder and breaks it: its config.json
(an unknown family, a field that changes the computation), its tensors
(missing, extra, mis-shaped, another dtype), in the single-file layout and
in the sharded one (llama's three shards), or its files (no config.json, a
PyTorch pickle). The last tests check the other side: what loads is
exactly the checkpoint, with nothing random standing in for a weight.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from models_fixtures import FAMILIES, fixture_folder
from safetensors.numpy import load_file, save_file

import blox.models as bm
from blox.models._config import FAMILIES as MODEL_TYPES
from blox.models._layout import forward, ignored, tensor_maps
from blox.models._safetensors_format import INDEX_FILE, SINGLE_FILE
from blox.models._safetensors_read import CheckpointFiles
from blox.models._safetensors_write import PendingTensor, write_checkpoint

ROOT = ("model", "lm")


def copy_fixture(tmp_path: Path, family: str) -> Path:
  """A writable copy of `family`'s fixture folder."""
  return Path(shutil.copytree(fixture_folder(family), tmp_path / family))


def edit_config(folder: Path, **changes: Any) -> None:
  """Sets the config.json fields `changes` (None removes a field)."""
  path = folder / "config.json"
  config = json.loads(path.read_text())
  for key, value in changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  path.write_text(json.dumps(config))


def edit_tensors(
    folder: Path, changes: Mapping[str, np.ndarray | None], *, new_in: str | None = None
) -> None:
  """Replaces (an array), removes (None) or adds tensors in the folder's
  safetensors files, keeping the index of a sharded checkpoint in step; a new
  tensor goes into the file `new_in` (the first one if None)."""
  index_path = folder / INDEX_FILE
  index = json.loads(index_path.read_text()) if index_path.is_file() else None
  files = sorted(path.name for path in folder.glob("*.safetensors"))
  new_in = new_in or files[0]
  present = set(checkpoint(folder))
  for file in files:
    tensors = load_file(folder / file)
    for name, array in changes.items():
      if name in tensors or (array is not None and name not in present and file == new_in):
        if array is None:
          del tensors[name]
        else:
          tensors[name] = array
        if index is not None:
          if array is None:
            del index["weight_map"][name]
          else:
            index["weight_map"][name] = file
    save_file(tensors, str(folder / file), metadata={"format": "pt"})
  if index is not None:
    index_path.write_text(json.dumps(index))


def checkpoint(folder: Path) -> dict[str, np.ndarray]:
  """Every tensor of the folder, by name."""
  tensors: dict[str, np.ndarray] = {}
  for path in folder.glob("*.safetensors"):
    tensors.update(load_file(path))
  return tensors


def constant(array: np.ndarray) -> Callable[[], np.ndarray]:
  return lambda: array


def message(error: pytest.ExceptionInfo[BaseException]) -> str:
  return str(error.value)


# ---- config.json -----------------------------------------------------------


def test_an_unknown_model_type_names_it_and_lists_the_supported_ones(tmp_path: Path) -> None:
  folder = copy_fixture(tmp_path, "mistral")
  edit_config(folder, model_type="bert")
  with pytest.raises(bm.UnsupportedConfigError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert "model_type 'bert'" in text and str(folder / "config.json") in text
  for model_type in MODEL_TYPES:
    assert repr(model_type) in text, model_type
  assert "transformers" in text  # what to do instead


@pytest.mark.parametrize(
    ("family", "changes", "field", "value"),
    [
        ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
         "rope_parameters", "'yarn'"),
        ("mistral", {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
         "rope_scaling", "'dynamic'"),
        ("llama", {"hidden_act": "relu"}, "hidden_act", "'relu'"),
        ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation", "'gelu'"),
        ("gpt2", {"activation_function": "relu"}, "activation_function", "'relu'"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx", "True"),
        ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor", "0.5"),
        ("qwen2", {"pretraining_tp": 2}, "pretraining_tp", "2"),
    ],
)
def test_a_field_that_changes_the_computation_is_refused_by_name(
    tmp_path: Path, family: str, changes: dict[str, Any], field: str, value: str
) -> None:
  folder = copy_fixture(tmp_path, family)
  edit_config(folder, **changes)
  with pytest.raises(bm.UnsupportedConfigError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert f"{field}=" in text and value in text, text
  assert str(folder / "config.json") in text and "transformers" in text, text
  # The fixture's own config loads: the field alone is the reason.
  bm.read_config(fixture_folder(family))


def test_a_config_that_is_not_json_names_the_file(tmp_path: Path) -> None:
  folder = copy_fixture(tmp_path, "qwen3")
  (folder / "config.json").write_text('{"model_type": "qwen3",')
  with pytest.raises(ValueError, match=re.escape(str(folder / "config.json"))) as error:
    bm.load_pretrained(folder)
  assert "not valid JSON" in message(error) and "again" in message(error)


# ---- tensors ---------------------------------------------------------------

# (family, a tensor of it, its shape, the file that holds it): single file and sharded.
LAYOUTS = [
    ("mistral", "model.layers.1.self_attn.k_proj.weight", [16, 32], SINGLE_FILE),
    ("llama", "model.layers.1.self_attn.k_proj.weight", [16, 32], "model-00002-of-00003.safetensors"),
]


@pytest.mark.parametrize(("family", "name", "shape", "file"), LAYOUTS)
def test_a_missing_tensor_is_named_with_its_shape(
    tmp_path: Path, family: str, name: str, shape: list[int], file: str
) -> None:
  folder = copy_fixture(tmp_path, family)
  edit_tensors(folder, {name: None})
  with pytest.raises(bm.CheckpointMismatchError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert f"{name!r} of shape {shape} is missing" in text, text
  assert str(folder) in text and "Download the whole checkpoint" in text, text


@pytest.mark.parametrize(("family", "name", "shape", "file"), LAYOUTS)
def test_an_extra_tensor_is_named_with_its_file(
    tmp_path: Path, family: str, name: str, shape: list[int], file: str
) -> None:
  folder = copy_fixture(tmp_path, family)
  extra = "model.layers.2.self_attn.k_proj.weight"  # a third layer; the config has two
  edit_tensors(folder, {extra: np.zeros(shape, np.float32)}, new_in=file)
  with pytest.raises(bm.CheckpointMismatchError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert f"{extra!r} (in {file})" in text, text
  assert "Check that the config belongs to these weights" in text, text


@pytest.mark.parametrize(("family", "name", "shape", "file"), LAYOUTS)
def test_a_mis_shaped_tensor_is_named_with_its_file_and_the_expected_shape(
    tmp_path: Path, family: str, name: str, shape: list[int], file: str
) -> None:
  folder = copy_fixture(tmp_path, family)
  edit_tensors(folder, {name: np.zeros([shape[0], shape[1] // 2], np.float32)})
  with pytest.raises(bm.CheckpointMismatchError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  wrong = [shape[0], shape[1] // 2]
  assert f"{name!r} in {file} has shape {wrong}, but the config.json needs {shape}" in text, text
  assert "Check that the config belongs to these weights" in text, text


def test_a_tied_head_in_the_checkpoint_is_not_an_extra_tensor(tmp_path: Path) -> None:
  # transformers may save lm_head.weight beside a tied embedding; it repeats it.
  folder = copy_fixture(tmp_path, "qwen2")
  embedding = load_file(folder / SINGLE_FILE)["model.embed_tokens.weight"]
  edit_tensors(folder, {"lm_head.weight": embedding})
  _, params = bm.load_pretrained(folder)
  assert (*ROOT, "head", "kernel") not in params
  np.testing.assert_array_equal(params[(*ROOT, "embed", "embedding")].value, embedding)


# ---- dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_another_dtype_than_the_configs_needs_param_dtype(tmp_path: Path, family: str) -> None:
  folder = copy_fixture(tmp_path, family)
  edit_tensors(folder, {name: array.astype(np.float16) for name, array in checkpoint(folder).items()})
  with pytest.raises(bm.CheckpointMismatchError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert re.search(r"tensor '[\w.]+' in [\w.-]+ is float16, but the config says float32", text), text
  assert "pass param_dtype=" in text, text


@pytest.mark.parametrize("family", ["mistral", "llama"])
@pytest.mark.parametrize("param_dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_param_dtype_casts_every_weight_from_the_checkpoint(
    tmp_path: Path, family: str, param_dtype: Any
) -> None:
  folder = copy_fixture(tmp_path, family)
  stored = {name: array.astype(np.float16) for name, array in checkpoint(folder).items()}
  edit_tensors(folder, stored)
  model, params = bm.load_pretrained(folder, param_dtype=param_dtype)
  cast = np.dtype(param_dtype)
  assert {np.dtype(param.value.dtype) for param in params.values()} == {cast}
  for entry in tensor_maps(model.architecture, ROOT):
    value = np.asarray(params[entry.path].value)
    value = value[entry.layer] if entry.layer is not None else value
    want = forward(stored[entry.hf], entry.ops).astype(cast)
    assert value.dtype == want.dtype
    np.testing.assert_array_equal(value.view(np.uint8), want.view(np.uint8), err_msg=entry.hf)


def test_a_bfloat16_checkpoint_loads_as_is_when_the_config_says_bfloat16(tmp_path: Path) -> None:
  folder = copy_fixture(tmp_path, "qwen3")
  stored = {name: array.astype(ml_dtypes.bfloat16) for name, array in checkpoint(folder).items()}
  (folder / SINGLE_FILE).unlink()
  # safetensors.numpy cannot write bfloat16; blox's writer can.
  write_checkpoint(folder, [
      PendingTensor(name, array.shape, array.dtype, constant(array)) for name, array in stored.items()])
  edit_config(folder, dtype="bfloat16")
  _, params = bm.load_pretrained(folder)
  embedding = params[(*ROOT, "embed", "embedding")].value
  assert embedding.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(embedding).view(np.uint16), stored["model.embed_tokens.weight"].view(np.uint16))


# ---- files -----------------------------------------------------------------


def test_a_folder_without_config_json_is_refused(tmp_path: Path) -> None:
  folder = copy_fixture(tmp_path, "gpt2")
  (folder / "config.json").unlink()
  with pytest.raises(FileNotFoundError) as error:
    bm.load_pretrained(folder)
  assert str(folder) in message(error) and "no config.json" in message(error)


def test_a_pytorch_pickle_checkpoint_is_refused_and_never_opened(tmp_path: Path) -> None:
  folder = copy_fixture(tmp_path, "mistral")
  (folder / SINGLE_FILE).rename(folder / "kept.safetensors.bak")
  # Not a pickle at all: unpickling it would fail with another error.
  (folder / "pytorch_model.bin").write_bytes(b"not a pickle")
  with pytest.raises(FileNotFoundError) as error:
    bm.load_pretrained(folder)
  text = message(error)
  assert "'pytorch_model.bin'" in text and "never loads" in text and "convert" in text, text
  # Beside safetensors, the pickle is ignored.
  (folder / "kept.safetensors.bak").rename(folder / SINGLE_FILE)
  _, params = bm.load_pretrained(folder)
  assert params[(*ROOT, "final_norm", "scale")].value.shape == (32,)


# ---- nothing random --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_param_is_the_checkpoint_tensor_it_came_from(family: str) -> None:
  folder = fixture_folder(family)
  model, params = bm.load_pretrained(folder)
  config = model.architecture
  with CheckpointFiles(folder) as files:
    maps = tensor_maps(config, ROOT, "" if family == "gpt2" and "wte.weight" in files.names else None)
    assert {entry.path for entry in maps} == set(params)
    assert {entry.hf for entry in maps} == {name for name in files.names if not ignored(name, config)}
    for entry in maps:
      value = np.asarray(params[entry.path].value)
      value = value[entry.layer] if entry.layer is not None else value
      np.testing.assert_array_equal(value, forward(files.read(entry.hf), entry.ops), err_msg=entry.hf)
  # Pretrained params hold no random stream: no Rng seed or counter, nothing non-trainable.
  assert not [path for path in params if path[-1] in ("seed", "counter")]
  assert all(param.trainable for param in params.values())
  assert all(jnp.issubdtype(param.value.dtype, jnp.floating) for param in params.values())


def test_named_weights_are_the_checkpoints_in_blox_layout() -> None:
  # Written out by hand, not through the maps: the layout itself is checked.
  _, llama = bm.load_pretrained(fixture_folder("llama"))
  _, gpt2 = bm.load_pretrained(fixture_folder("gpt2"))
  layer = (*ROOT, "layers", "layer")
  with CheckpointFiles(fixture_folder("llama")) as files:
    query = files.read("model.layers.1.self_attn.q_proj.weight")  # [heads * head_dim, hidden]
    np.testing.assert_array_equal(
        llama[(*layer, "attention", "query", "kernel")].value[1], query.T.reshape(32, 4, 8))
    out = files.read("model.layers.0.self_attn.o_proj.weight")  # [hidden, heads * head_dim]
    np.testing.assert_array_equal(llama[(*layer, "attention", "out", "kernel")].value[0], out.T.reshape(4, 8, 32))
    np.testing.assert_array_equal(llama[(*ROOT, "head", "kernel")].value, files.read("lm_head.weight").T)
  with CheckpointFiles(fixture_folder("gpt2")) as files:
    fused = files.read("transformer.h.1.attn.c_attn.weight")  # [hidden, 3 * hidden], Conv1D
    value = gpt2[(*layer, "attention", "value", "kernel")].value[1]
    np.testing.assert_array_equal(value, fused[:, 64:].reshape(32, -1, 32 // value.shape[1]))
    np.testing.assert_array_equal(
        gpt2[(*ROOT, "positions", "embedding")].value, files.read("transformer.wpe.weight"))
