"""Import Hugging Face BERT weights (``model.safetensors``) into :class:`BertClassifier`.

The conversion is a rename plus transposes (see the parameter tree in
:mod:`reducr_jax.models.bert`):

====================================================  ==========================================
Hugging Face key (``bert.`` prefix optional)          Flax ``params`` path
====================================================  ==========================================
``embeddings.word_embeddings.weight`` [V, H]          ``embeddings/word_embeddings/embedding``
``embeddings.position_embeddings.weight``             ``embeddings/position_embeddings/embedding``
``embeddings.token_type_embeddings.weight``           ``embeddings/token_type_embeddings/embedding``
``embeddings.LayerNorm.{weight,bias}``                ``embeddings/layer_norm/{scale,bias}``
``encoder.layer.{i}.attention.self.{q,k,v}.*``        ``layer_{i}/attention/{query,key,value}``
``encoder.layer.{i}.attention.output.dense.*``        ``layer_{i}/attention/output``
``encoder.layer.{i}.attention.output.LayerNorm.*``    ``layer_{i}/attention_layer_norm``
``encoder.layer.{i}.intermediate.dense.*``            ``layer_{i}/intermediate``
``encoder.layer.{i}.output.dense.*``                  ``layer_{i}/output``
``encoder.layer.{i}.output.LayerNorm.*``              ``layer_{i}/output_layer_norm``
``pooler.dense.*``                                    ``pooler``
``classifier.*`` (``include_head=True`` only)         ``classifier``
====================================================  ==========================================

Linear ``weight`` ``[out, in]`` → ``kernel`` ``[in, out]``; LayerNorm ``weight``/``bias``
(or the legacy TF-port names ``gamma``/``beta``) → ``scale``/``bias``. The MLM/NSP head
(``cls.*``), other task heads and the ``position_ids``/``token_type_ids`` buffers are
ignored. Typical use (MNLI: pretrained bert-base-uncased, fresh 3-way classifier)::

  model = BertClassifier(num_outputs=3)
  variables = model.init(key, jnp.zeros((1, 2, 128), jnp.int32))
  tensors = load_hf_checkpoint("/path/to/bert-base-uncased")  # holds model.safetensors
  pretrained = bert_variables_from_hf(tensors, include_head=False)
  variables = merge_pretrained(variables, pretrained, include_head=False)

safetensors is imported lazily, only by :func:`load_hf_checkpoint`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from flax import traverse_util
import numpy as np

from reducr_jax.models import merge as merge_lib

WEIGHTS_HELP = (
    "download bert-base-uncased (model.safetensors, vocab.txt, config.json from "
    "huggingface.co/bert-base-uncased) where there is network access and pass the local "
    "directory")

# HF module path (after the optional "bert." prefix) → (Flax path, kind).
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_MODULES = {
    "attention.self.query": (("attention", "query"), "linear"),
    "attention.self.key": (("attention", "key"), "linear"),
    "attention.self.value": (("attention", "value"), "linear"),
    "attention.output.dense": (("attention", "output"), "linear"),
    "attention.output.LayerNorm": (("attention_layer_norm",), "norm"),
    "intermediate.dense": (("intermediate",), "linear"),
    "output.dense": (("output",), "linear"),
    "output.LayerNorm": (("output_layer_norm",), "norm"),
}
_TOP_MODULES = {
    "embeddings.word_embeddings": (("embeddings", "word_embeddings"), "embed"),
    "embeddings.position_embeddings": (("embeddings", "position_embeddings"), "embed"),
    "embeddings.token_type_embeddings": (("embeddings", "token_type_embeddings"), "embed"),
    "embeddings.LayerNorm": (("embeddings", "layer_norm"), "norm"),
    "pooler.dense": (("pooler",), "linear"),
}
_HEAD = ("classifier", (("classifier",), "linear"))
# HF leaf → Flax leaf, per kind (LayerNorm also under its legacy gamma/beta names).
_LEAVES = {
    "linear": {"weight": "kernel", "bias": "bias"},
    "embed": {"weight": "embedding"},
    "norm": {"weight": "scale", "bias": "bias", "gamma": "scale", "beta": "bias"},
}
_NDIM = {"kernel": 2, "embedding": 2, "bias": 1, "scale": 1}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_ENCODER_PARTS = ("embeddings.", "encoder.", "pooler.")


def _to_numpy(name: str, value: Any) -> np.ndarray:
  """A torch tensor or array-like → float32 NumPy."""
  if hasattr(value, "detach"):   # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  array = np.asarray(value)
  if array.dtype == object or not (np.issubdtype(array.dtype, np.floating)
                                   or array.dtype.name == "bfloat16"):
    raise ValueError(f"tensors[{name!r}] must be a float tensor/array, got "
                     f"{type(value).__name__} of dtype {array.dtype}")
  return np.ascontiguousarray(array, dtype=np.float32)


def bert_variables_from_hf(tensors: Mapping[str, Any], *,
                           include_head: bool = False) -> dict:
  """Hugging Face BERT tensors → Flax variables of :class:`BertClassifier`.

  Args:
    tensors: ``{HF key: tensor or array}`` of a ``BertModel`` (keys without prefix),
      ``BertForSequenceClassification`` or ``BertForPreTraining`` (keys under ``bert.``),
      e.g. :func:`load_hf_checkpoint`'s result or ``model.state_dict()``.
    include_head: also convert ``classifier.*`` (a fine-tuned sequence classifier).

  Returns:
    ``{"params": ...}``, nested dicts of float32 NumPy arrays; the number of layers is
    that of the checkpoint.

  Raises:
    ValueError: (one line, listing the first few) unknown keys under
      ``embeddings``/``encoder``/``pooler``, missing keys, or a tensor of the wrong rank.
  """
  flat: dict[tuple, np.ndarray] = {}
  leaves_seen: dict[str, set] = {}   # HF module path (no prefix) → Flax leaves found
  layers: set[int] = set()
  unknown = []
  for key, value in tensors.items():
    key = str(key)
    hf = key[len("bert."):] if key.startswith("bert.") else key
    module, _, leaf = hf.rpartition(".")
    if hf in _BUFFERS:
      continue
    layer = _LAYER.match(module)
    if layer:
      entry = _LAYER_MODULES.get(layer.group(2))
      if entry is not None:
        layers.add(int(layer.group(1)))
        entry = ((f"layer_{int(layer.group(1))}", *entry[0]), entry[1])
    elif module == _HEAD[0]:
      if not include_head:
        continue
      entry = _HEAD[1]
    else:
      entry = _TOP_MODULES.get(module)
    if entry is None or leaf not in _LEAVES[entry[1]]:
      if hf.startswith(_ENCODER_PARTS) or (include_head and module == _HEAD[0]):
        unknown.append(key)
      continue                  # cls.* (pre-training heads), other task heads.
    path, kind = entry
    flax_leaf = _LEAVES[kind][leaf]
    array = _to_numpy(key, value)
    if array.ndim != _NDIM[flax_leaf]:
      raise ValueError(f"tensors[{key!r}] must be {_NDIM[flax_leaf]}-D, "
                       f"got shape {array.shape}")
    if flax_leaf == "kernel":
      array = np.ascontiguousarray(array.T)   # [out, in] → [in, out]
    flat[("params", *path, flax_leaf)] = array
    leaves_seen.setdefault(module, set()).add(flax_leaf)
  if unknown:
    raise ValueError(f"tensors has {len(unknown)} key(s) that are not in a Hugging Face "
                     f"BERT: {merge_lib.first_names(unknown)}")

  expected = dict((m, kind) for m, (_, kind) in _TOP_MODULES.items())
  for i in range(max(layers, default=-1) + 1):
    expected.update({f"encoder.layer.{i}.{m}": kind
                     for m, (_, kind) in _LAYER_MODULES.items()})
  if include_head:
    expected[_HEAD[0]] = _HEAD[1][1]
  missing = []
  for module, kind in expected.items():
    wanted = set(_LEAVES[kind].values())
    got = leaves_seen.get(module, set())
    missing += [f"{module}.{'weight' if l in ('kernel', 'embedding', 'scale') else 'bias'}"
                for l in sorted(wanted - got)]
  if missing:
    raise ValueError(f"tensors is missing {len(missing)} key(s) of a Hugging Face BERT"
                     f"{' classifier' if include_head else ''}: "
                     f"{merge_lib.first_names(missing)}")
  return traverse_util.unflatten_dict(flat)


def load_hf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads Hugging Face ``safetensors`` weights into ``{key: NumPy array}``.

  Args:
    path: a ``model.safetensors`` file or a directory holding one (e.g. a local
      ``bert-base-uncased`` download or ``save_pretrained(..., safe_serialization=True)``
      output). Sharded checkpoints (``model-0000x-of-0000y.safetensors``) are merged.

  Returns:
    the tensors as NumPy arrays, keyed as in the file.
  """
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    files = [os.path.join(path, "model.safetensors")]
    if not os.path.isfile(files[0]):
      files = sorted(os.path.join(path, f) for f in os.listdir(path)
                     if re.fullmatch(r"model-\d+-of-\d+\.safetensors", f))
    if not files:
      raise FileNotFoundError(f"no model.safetensors in directory {path!r}; {WEIGHTS_HELP}")
  elif os.path.isfile(path):
    files = [path]
  else:
    raise FileNotFoundError(f"no checkpoint at {path!r}; {WEIGHTS_HELP}")
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('reading .safetensors needs safetensors: '
                      'pip install "reducr_jax[text]"') from None
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    tensors.update(load_file(file))
  return tensors


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                     include_head: bool) -> dict:
  """:func:`reducr_jax.models.merge.merge_variables` with the BERT head
  ``classifier`` (``include_head=False`` keeps a fresh task head)."""
  return merge_lib.merge_variables(variables, pretrained, head="classifier",
                                   include_head=include_head)
