"""A finished run's ``results.json`` and ``timing.json`` (stage 3 of the trainer)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from reducr_jax.core import registry
from reducr_jax import data
from reducr_jax.run import divergence
from reducr_jax.run import metric_writers
from reducr_jax import selectors
from reducr_jax.train import train_state
from reducr_jax.core import groups as groups_lib


class RunInfo(NamedTuple):
  """What the results record besides the final evaluation.

  Attributes:
    eta: the MWU η the run used (a number, or ``"auto"``'s anytime schedule).
    given_eta: ``config.selection.eta`` as given (``"auto"`` stays ``"auto"``).
    pruning_info: the pruning stage's record (``prune_stage.prune_train_split``).
    expert_seconds: stage 1's wall-clock seconds.
    train_start: ``time.time()`` when the stage-2 loop started.
    steps_run: stage-2 steps this run (not counting resumed ones).
    devices: global data-parallel devices.
  """
  eta: Any
  given_eta: Any
  pruning_info: Any
  expert_seconds: float
  train_start: float
  steps_run: int
  devices: int


def write_results(config: ml_collections.ConfigDict, workdir: str, splits: data.Splits,
                  cfg: train_state.StepConfig, final_state: train_state.TrainState,
                  best: dict, val: dict, test: dict, group_of, info: RunInfo) -> dict:
  """Writes ``<workdir>/results.json`` (the kept model's ``val`` / ``test`` metrics, the
  final class weights, the run's status) and ``timing.json``; returns the results dict.

  Raises:
    divergence.Diverged: the share of skipped steps exceeds
    ``config.max_skipped_share`` (after writing, so the record stays).
  """
  recorded = json.loads(config.to_json_best_effort())
  status = divergence.run_status(int(final_state.num_skipped), config.num_steps,
                                 config.max_skipped_share)
  results = {
      "method": config.selection.method,
      "reweight": config.reweight,
      "pruning": info.pruning_info,
      "best_step": int(best["step"]),
      "model_selection": selectors.model_selection(config),
      "num_steps": int(config.num_steps),
      "eta": info.eta,                      # MWU η: a number, or "auto"'s anytime schedule
      "val": val,
      "test": test,
      "class_weights": np.asarray(registry.class_weights(
          cfg.selector, final_state.selector_state, cfg.num_classes)).tolist(),
      "class_names": splits.class_names,
      **({"group_names": groups_lib.group_names(config.dataset.groups, splits.class_names)}
         if group_of is not None else {}),
      "num_skipped": int(final_state.num_skipped),
      **status,                        # "status": "ok" | "diverged", "skipped_share"
      "config": recorded,
  }
  recorded["selection"]["eta"] = info.given_eta           # as given ("auto" stays "auto")
  metric_writers.write_json(os.path.join(workdir, "results.json"), results)
  metric_writers.write_json(os.path.join(workdir, "timing.json"),
                            {"expert_seconds": info.expert_seconds,
                             "train_seconds": time.time() - info.train_start,
                             "steps_run": info.steps_run, "devices": info.devices,
                             "backend": jax.default_backend()})
  divergence.check_share(status, int(final_state.num_skipped), config.num_steps,
                         config.max_skipped_share)
  return results
