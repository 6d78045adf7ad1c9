"""Hugging Face directories, shared by every family's mapping: safetensors in and out, shape checks.

Only safetensors are read: pickle files (`pytorch_model.bin`) can run code when loaded and are
refused. A family's module (`hf_decoder`, `hf_t5`) maps its config and tensor names; this one reads
and writes the directories (config.json, single or sharded weights with an index).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes  # registers bfloat16 with numpy, so safetensors can hand back bf16 arrays
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from itjax.errors import UserError

Params = dict[str, Any]
Shapes = dict[str, tuple[int, ...]]

NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_SHARD = "model-{:05d}-of-{:05d}.safetensors"
_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def natural_key(name: str) -> list[Any]:
  """Sort key that puts layers.2 before layers.10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_shapes(expected: Shapes, actual: Shapes, what: str) -> None:
  """Raises UserError listing every missing, unexpected and mis-shaped entry (one line)."""
  missing = sorted(expected.keys() - actual.keys(), key=natural_key)
  extra = sorted(actual.keys() - expected.keys(), key=natural_key)
  wrong = sorted((n for n in expected.keys() & actual.keys() if tuple(expected[n]) != tuple(actual[n])),
                 key=natural_key)
  if not (missing or extra or wrong):
    return
  parts = []
  if missing:
    parts.append("missing: " + ", ".join(f"{n} {list(expected[n])}" for n in missing))
  if extra:
    parts.append("unexpected: " + ", ".join(f"{n} {list(actual[n])}" for n in extra))
  if wrong:
    parts.append("wrong shape: " + ", ".join(f"{n} expected {list(expected[n])} got {list(actual[n])}"
                                             for n in wrong))
  count = len(missing) + len(extra) + len(wrong)
  raise UserError(f"{what} does not match the model config ({count} differences): " + "; ".join(parts))


def shape_of(tensors: Mapping[str, Any], name: str) -> tuple[int, ...]:
  """Shape without reading data when the mapping can tell it (lazy safetensors)."""
  shape_of = getattr(tensors, "shape_of", None)
  return tuple(shape_of(name)) if shape_of else tuple(np.shape(tensors[name]))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> Params:
  out: Params = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def checked_reader(tensors: Mapping[str, Any], expected: Shapes, *, ignored: re.Pattern, tied_head: tuple | None,
                   dtype: Any) -> Callable[[str], np.ndarray]:
  """`get(name)` over HF tensors once their names and shapes match `expected` (UserError listing every difference).

  Names matching `ignored` (buffers, copies) are left out; with `tied_head` (the embedding's shape), a
  tied model's correctly shaped `lm_head.weight` is too. Each tensor is read once, as `dtype`.
  """
  actual = {name: shape_of(tensors, name) for name in tensors if not ignored.search(name)}
  if tied_head is not None and actual.get("lm_head.weight") == tied_head:
    del actual["lm_head.weight"]
  check_shapes(expected, actual, "Hugging Face checkpoint")
  dt = np.dtype(dtype)
  return lambda name: np.asarray(tensors[name]).astype(dt, copy=False)


def read_config(path: str) -> dict[str, Any]:
  """An HF model directory's config.json (UserError if the directory or the file is missing or unreadable)."""
  if not os.path.isdir(path):
    raise UserError(f"{path}: not a directory (expected a Hugging Face model directory)")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"{config_path} not found (a Hugging Face model directory needs config.json)")
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{config_path}: unreadable ({e})") from None
  if not isinstance(config, dict):
    raise UserError(f"{config_path}: expected a JSON object")
  return config


def config_of(path: str, build: Callable[[dict[str, Any]], Any]) -> Any:
  """`build(config.json)` for an HF directory, a bad value (wrong type, out of range) naming the file."""
  config = read_config(path)
  try:
    return build(config)
  except (UserError, TypeError, ValueError) as e:
    raise UserError(f"{os.path.join(path, 'config.json')}: {e}") from None


def read_tensors(path: str) -> SafetensorsTensors:
  """A lazy view of an HF directory's safetensors weights."""
  return SafetensorsTensors(weight_files(path))


class SafetensorsTensors(Mapping):
  """Read-only name -> numpy view over several safetensors files; reads a tensor only when indexed."""

  def __init__(self, files: list[str]):
    self._where: dict[str, Any] = {}
    for file in files:
      try:
        handle = safe_open(file, framework="np")
      except Exception as e:  # noqa: BLE001 -- safetensors' SafetensorError is not importable as a stable name
        raise UserError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())[:200]}); it may be "
                        "truncated: download or save it again") from None
      for name in handle.keys():
        if name in self._where:
          raise UserError(f"tensor {name!r} appears in more than one safetensors file ({file})")
        self._where[name] = handle

  def __getitem__(self, name: str) -> np.ndarray:
    try:
      return self._where[name].get_tensor(name)
    except KeyError:
      raise
    except Exception as e:  # noqa: BLE001 -- a damaged file fails here, on first read
      raise UserError(f"tensor {name!r}: cannot be read ({' '.join(str(e).split())[:200]}); its safetensors file "
                      "may be truncated: download or save it again") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)

  def shape_of(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name].get_slice(name).get_shape())


def weight_files(path: str) -> list[str]:
  """The safetensors files of an HF model directory (index first); refuses pickle-only directories."""
  index = os.path.join(path, _INDEX)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"{index}: unreadable safetensors index ({e})") from None
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    absent = [f for f in files if not os.path.exists(f)]
    if absent:
      raise UserError(f"{index} names shard files that do not exist: {', '.join(absent)}")
    return files
  single = os.path.join(path, _SINGLE)
  if os.path.exists(single):
    return [single]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if files:
    return files
  pickles = sorted(os.path.basename(f) for pattern in _PICKLE_GLOBS for f in glob.glob(os.path.join(path, pattern)))
  if pickles:
    raise UserError(f"{path} has only pickle weights ({', '.join(pickles)}); safetensors are required "
                    "(pickle files can run code when loaded, so they are never read). Convert them to "
                    "*.safetensors first, e.g. with transformers: save_pretrained(..., safe_serialization=True).")
  raise UserError(f"{path} has no *.safetensors weights")


def split_shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
  """Greedy split in name order; a tensor larger than the limit gets a shard of its own."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors, key=natural_key):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  return shards


def write_hf_dir(path: str | os.PathLike, hf_config: dict, hf_tensors: Mapping[str, np.ndarray], dtype: str,
                 max_shard_bytes: int) -> None:
  """Writes config.json and safetensors weights (sharded with an index past `max_shard_bytes`), removing
  stale weight files from an earlier save; shared by every HF model family's export."""
  if dtype not in NP_DTYPES:
    raise UserError(f"unknown export dtype {dtype!r}; expected one of {sorted(NP_DTYPES)}")
  if max_shard_bytes <= 0:
    raise UserError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  hf_config = {**hf_config, "dtype": dtype, "torch_dtype": dtype}
  np_dtype = NP_DTYPES[dtype]
  tensors = {name: value.astype(np_dtype, copy=False) for name, value in hf_tensors.items()}

  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  for stale in [_SINGLE, _INDEX, *map(os.path.basename, glob.glob(os.path.join(path, "model-*-of-*.safetensors")))]:
    if os.path.exists(os.path.join(path, stale)):
      os.remove(os.path.join(path, stale))
  shards = split_shards(tensors, max_shard_bytes)
  metadata = {"format": "pt"}  # transformers checks this header field
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, _SINGLE), metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      name = _SHARD.format(i + 1, len(shards))
      save_file(shard, os.path.join(path, name), metadata=metadata)
      weight_map.update({tensor: name for tensor in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(path, _INDEX), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
    f.write("\n")
