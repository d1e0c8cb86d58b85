"""Import torchvision ResNet weights (``.pth``/``.pt`` or ``.safetensors``) into :class:`ResNet18`.

:class:`reducr_jax.models.resnet.ResNet18` mirrors torchvision's module names, so the
conversion is layout only (see the table in :mod:`reducr_jax.models.resnet`):

* conv ``weight`` ``[O, I, kh, kw]`` → ``kernel`` ``[kh, kw, I, O]``;
* linear ``weight`` ``[O, I]`` → ``kernel`` ``[I, O]``, ``bias`` unchanged;
* BatchNorm ``weight``/``bias`` → ``params`` ``scale``/``bias``, ``running_mean``/
  ``running_var`` → ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is dropped
  (Flax's BatchNorm uses a fixed momentum).

Typical use (Clothing1M: ImageNet-pretrained trunk, fresh 14-way head)::

  model = ResNet18(num_outputs=14, stem="imagenet", mean=IMAGENET_MEAN, std=IMAGENET_STD)
  variables = model.init(key, jnp.zeros((1, 224, 224, 3), jnp.uint8))
  state_dict = load_torch_checkpoint("resnet18-f37072fd.pth")
  pretrained = resnet_variables_from_torch(state_dict, include_head=False)
  variables = merge_pretrained(variables, pretrained, include_head=False)

torch and safetensors are imported lazily, only by :func:`load_torch_checkpoint`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from flax import traverse_util
import numpy as np

from reducr_jax.models import merge as merge_lib

WEIGHTS_HELP = (
    "torchvision's ImageNet ResNet-18 weights are torchvision.models.ResNet18_Weights."
    "IMAGENET1K_V1, file resnet18-f37072fd.pth "
    "(https://download.pytorch.org/models/resnet18-f37072fd.pth); download it where there "
    "is network access and pass its local path")

_TOP_KEY = re.compile(r"^(conv1|bn1|fc)\.([A-Za-z_]+)$")
_BLOCK_KEY = re.compile(
    r"^layer(\d+)\.(\d+)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.([A-Za-z_]+)$")

# torch leaf → (Flax collection, Flax leaf), per module kind.
_LEAVES = {
    "conv": {"weight": ("params", "kernel")},
    "bn": {"weight": ("params", "scale"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")},
    "linear": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
}
_NDIM = {("conv", "weight"): 4, ("linear", "weight"): 2}
_BLOCK_MODULES = ("conv1", "bn1", "conv2", "bn2")


def _kind(module: str) -> str:
  if module == "fc":
    return "linear"
  return "conv" if module in ("conv1", "conv2", "downsample.0") else "bn"


def _to_numpy(name: str, value: Any) -> np.ndarray:
  """A torch tensor or array-like → NumPy (bfloat16/float16 tensors become float32)."""
  if hasattr(value, "detach"):   # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
      value = value.float()
    value = value.numpy()
  array = np.asarray(value)
  if array.dtype == object:
    raise ValueError(f"state_dict[{name!r}] must be a tensor/array, got {type(value).__name__}")
  return array


def resnet_variables_from_torch(state_dict: Mapping[str, Any], *,
                                include_head: bool = True) -> dict:
  """torchvision ResNet (BasicBlock) state dict → Flax variables of :class:`ResNet18`.

  Works for either stem (``"imagenet"`` or ``"cifar"``) and any width/stage sizes: the
  conversion only renames and transposes.

  Args:
    state_dict: ``{torch key: tensor or array}``, e.g. ``model.state_dict()`` or
      :func:`load_torch_checkpoint`'s result.
    include_head: keep ``fc.*`` (False drops it, e.g. to train a fresh head with another
      number of classes; see :func:`merge_pretrained`).

  Returns:
    ``{"params": ..., "batch_stats": ...}`` nested dicts of float32 NumPy arrays.

  Raises:
    ValueError: on keys that are not part of the layout, missing keys, or a tensor with
      the wrong rank (one line, listing the first few).
  """
  flat = {}
  seen: dict[str, set] = {}   # torch module prefix → leaves seen
  blocks: dict[int, set] = {}  # layer number → block indices
  unknown = []
  for key, value in state_dict.items():
    key = str(key)
    if key.endswith(".num_batches_tracked"):
      continue
    top, block = _TOP_KEY.match(key), _BLOCK_KEY.match(key)
    if top:
      module, leaf = top.groups()
      if module == "fc" and not include_head:
        continue
      prefix, path = module, (module,)
    elif block:
      layer, index, module, leaf = block.groups()
      prefix = f"layer{layer}.{index}.{module}"
      path = (f"layer{int(layer)}_{int(index)}", module.replace(".", "_"))
      blocks.setdefault(int(layer), set()).add(int(index))
    else:
      unknown.append(key)
      continue
    kind = _kind(module)
    if leaf not in _LEAVES[kind]:
      unknown.append(key)
      continue
    array = _to_numpy(key, value)
    ndim = _NDIM.get((kind, leaf), 1)
    if array.ndim != ndim:
      raise ValueError(f"state_dict[{key!r}] must be {ndim}-D, got shape {array.shape}")
    if kind == "conv":
      array = array.transpose(2, 3, 1, 0)   # [O, I, kh, kw] → [kh, kw, I, O]
    elif kind == "linear" and leaf == "weight":
      array = array.T                       # [O, I] → [I, O]
    collection, flax_leaf = _LEAVES[kind][leaf]
    flat[(collection, *path, flax_leaf)] = np.ascontiguousarray(array, dtype=np.float32)
    seen.setdefault(prefix, set()).add(leaf)
  if unknown:
    raise ValueError(f"state_dict has {len(unknown)} key(s) that are not in a torchvision "
                     f"BasicBlock ResNet: {merge_lib.first_names(unknown)}")

  expected = ["conv1", "bn1"] + (["fc"] if include_head else [])
  missing = []
  for layer in range(1, max(blocks, default=1) + 1):
    if layer not in blocks:
      missing.append(f"layer{layer}.0.*")
      continue
    for index in range(max(blocks[layer]) + 1):
      block = f"layer{layer}.{index}"
      expected += [f"{block}.{m}" for m in _BLOCK_MODULES]
      if f"{block}.downsample.0" in seen or f"{block}.downsample.1" in seen:
        expected += [f"{block}.downsample.0", f"{block}.downsample.1"]
  for prefix in expected:
    module = prefix.split(".", 2)[-1] if prefix.startswith("layer") else prefix
    missing += [f"{prefix}.{leaf}" for leaf in _LEAVES[_kind(module)]
                if leaf not in seen.get(prefix, ())]
  if missing:
    raise ValueError(f"state_dict is missing {len(missing)} key(s) of a torchvision "
                     f"BasicBlock ResNet: {merge_lib.first_names(missing)}")
  return traverse_util.unflatten_dict(flat)


def checkpoint_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
  """``{key: shape}`` of a ``.pth``/``.pt`` or ``.safetensors`` state dict (safetensors:
  read from the header; torch: memory-mapped), for sizing a model before loading."""
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(path, framework="numpy") as f:
      return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  state = _torch_state_dict(path, mmap=True)
  return {str(k): tuple(getattr(v, "shape", ())) for k, v in state.items()}


def _torch_state_dict(path: str, mmap: bool = False) -> Mapping[str, Any]:
  """The state dict of a ``.pth``/``.pt`` file (raw, or under ``"state_dict"``/``"model"``),
  read with ``torch.load(weights_only=True)``, memory-mapped when ``mmap`` and possible."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('reading .pth/.pt checkpoints needs torch: '
                      'pip install "reducr_jax[torch]"') from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
  except RuntimeError:
    if not mmap:
      raise
    state = torch.load(path, map_location="cpu", weights_only=True)  # old non-zip format
  if isinstance(state, Mapping):
    for nested in ("state_dict", "model"):
      if isinstance(state.get(nested), Mapping):
        state = state[nested]
        break
  if not isinstance(state, Mapping):
    raise ValueError(f"checkpoint {path!r} must hold a state dict (mapping of tensors), "
                     f"got {type(state).__name__}")
  return state


def resnet_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict:
  """``width``, ``stage_sizes`` and ``stem`` of a torchvision BasicBlock ResNet state dict
  (``{key: shape}``): ``conv1`` output channels, blocks per ``layer<i>``, and the stem
  from ``conv1``'s kernel (7×7 ``imagenet``, 3×3 ``cifar``)."""
  conv1 = shapes.get("conv1.weight")
  blocks: dict[int, int] = {}
  for key in shapes:
    m = _BLOCK_KEY.match(key)
    if m:
      layer, index = int(m.group(1)), int(m.group(2))
      blocks[layer] = max(blocks.get(layer, 0), index + 1)
  if conv1 is None or len(conv1) != 4 or not blocks:
    raise ValueError("the checkpoint is not a torchvision BasicBlock ResNet state dict "
                     "(no conv1.weight or layer<i>.<j>.* keys)")
  sizes = {"width": int(conv1[0]),
           "stage_sizes": tuple(blocks.get(i, 0) for i in range(1, max(blocks) + 1))}
  if conv1[2] in (7, 3):
    sizes["stem"] = "imagenet" if conv1[2] == 7 else "cifar"
  return sizes


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torchvision checkpoint into ``{key: NumPy array}``.

  Args:
    path: a ``.pth``/``.pt`` file (``torch.load(..., weights_only=True)``; a raw state dict
      or one nested under ``"state_dict"`` or ``"model"``) or a ``.safetensors`` file
      (read with ``safetensors.numpy``, no torch needed).

  Returns:
    the state dict with NumPy values (bfloat16/float16 tensors converted to float32).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path!r}; {WEIGHTS_HELP}")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError('reading .safetensors needs safetensors: '
                        'pip install "reducr_jax[text]"') from None
    state = load_file(path)
  else:
    state = _torch_state_dict(path)
  return {str(k): _to_numpy(str(k), v) for k, v in state.items()}


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                     include_head: bool) -> dict:
  """:func:`reducr_jax.models.merge.merge_variables` with the ResNet head ``fc``
  (``include_head=False`` keeps a fresh head, e.g. 14 Clothing1M classes, not 1000)."""
  return merge_lib.merge_variables(variables, pretrained, head="fc",
                                   include_head=include_head)
