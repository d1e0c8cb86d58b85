"""Where stage 1's reference models are cached: the config fingerprint and the path.

The result is cached as ``<workdir>/experts/<kind>-<fingerprint>.msgpack`` (or in
``config.experts.cache_dir``); the fingerprint hashes everything the models depend on
(dataset, model and expert configs, seed), so a re-run reuses them and a changed config
retrains. Fields added to the config after a cache was written hash as absent while they
hold the value runs had before they existed (``configuration.ADDED_FIELDS``), so old
caches stay valid. The file itself is written and verified by :mod:`reducr_jax.caches`.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from reducr_jax import caches
from reducr_jax import configuration

# Fields that change how stage 1 runs, not what it computes (results equal to float
# tolerance), so a change reuses the cached models.
EXECUTION_FIELDS = ("cache_dir", "strategy", "chunk", "max_memory_gb")
# Fields of config.experts that act only in stage 2 (the online update of the trained
# models on the selected points): the stage-1 models they start from are the same.
STAGE2_FIELDS = ("update_on_selected", "update_lr_factor")


def fingerprint(config: ml_collections.ConfigDict, kind: str) -> str:
  def legacy(section):    # added fields at these values, as before the fields existed
    return {k.split(".", 1)[1]: v for k, v in configuration.ADDED_FIELDS.items()
            if k.startswith(section + ".")}

  def without_legacy(d: dict, section: str) -> dict:
    old = legacy(section)
    return {k: v for k, v in d.items()
            if not (k in old and json.dumps(v, default=str) == json.dumps(old[k], default=str))}
  expert_config = {k: v for k, v in without_legacy(config.experts.to_dict(), "experts").items()
                   if k not in EXECUTION_FIELDS + STAGE2_FIELDS}
  dataset = without_legacy(config.dataset.to_dict(), "dataset")
  blob = json.dumps({"format": 2, "kind": kind, "seed": config.seed, "dataset": dataset,
                     "model": without_legacy(config.model.to_dict(), "model"),
                     "experts": expert_config,
                     "eval_batch_size": config.eval_batch_size},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(config: ml_collections.ConfigDict, workdir: str, kind: str) -> str:
  """Where the reference models of ``kind`` for this config are cached.

  ``config.experts.cache_dir`` when set (e.g. shared by the runs of a sweep), else
  ``<workdir>/experts``; the file name holds the config fingerprint.
  """
  directory = config.experts.cache_dir or os.path.join(workdir, "experts")
  return os.path.join(caches.absolute(directory), f"{kind}-{fingerprint(config, kind)}.msgpack")
