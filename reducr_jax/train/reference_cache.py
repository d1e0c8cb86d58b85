"""Where stage 1's reference models are cached: the config fingerprint and the path.

The result is cached in ``<workdir>/experts/<kind>-<fingerprint>/`` (or in
``config.experts.cache_dir``); the fingerprint hashes everything the models depend on
(dataset, model and expert configs, seed), so a re-run reuses them and a changed config
retrains. Fields added to the config after a cache was written hash as absent while they
hold the value runs had before they existed (``config_schema.ADDED_FIELDS``), so old
caches stay valid. The cache itself is a checkpoint written and verified by
:func:`reducr_jax.run.checkpointing.write_cache` / :func:`~reducr_jax.run.checkpointing.read_cache`.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from reducr_jax.run import caches
from reducr_jax.config import config_schema

# Fields of config.experts left out of the cache fingerprint (config_schema): those that
# change how stage 1 runs, not what it computes, and those that act only in stage 2.
EXECUTION_FIELDS = config_schema.in_section(config_schema.EXPERTS_EXECUTION_FIELDS, "experts")
STAGE2_FIELDS = config_schema.in_section(config_schema.EXPERTS_STAGE2_FIELDS, "experts")


def fingerprint(config: ml_collections.ConfigDict, kind: str) -> str:
  def without_legacy(d: dict, section: str) -> dict:
    old = config_schema.added_in_section(section)   # added fields at their recorded values
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
  ``<workdir>/experts``; the directory name holds the config fingerprint.
  """
  directory = config.experts.cache_dir or os.path.join(workdir, "experts")
  return os.path.join(caches.absolute(directory), f"{kind}-{fingerprint(config, kind)}")
