"""Per-class evaluation of a (replicated) model over whole splits, data parallel."""

from __future__ import annotations

import jax
import numpy as np

from reducr_jax.core import class_weighted_losses
from reducr_jax.config import config_schema
from reducr_jax import data
from reducr_jax.core import metrics
from reducr_jax.run import progress
from reducr_jax.train import sharding
from reducr_jax.train.sharding import AXIS
from reducr_jax.train.sharding import shard


def make_eval_step(apply_fn, num_classes: int, devices):
  """``pmap``-ed ``(variables, x, y, mask) -> (correct ClassSums, loss ClassSums)``, psum-ed.

  ``apply_fn(variables, x) -> logits`` in evaluation mode (:attr:`ModelFns.apply`)."""
  def eval_step(params, x, y, mask):
    logits = apply_fn(params, x)
    correct = metrics.correct_sums(logits, y, mask)
    losses = metrics.class_sums(class_weighted_losses.cross_entropy(logits, y), y,
                                num_classes, mask)
    return jax.lax.psum((correct, losses), AXIS)
  return jax.pmap(eval_step, axis_name=AXIS, devices=devices)


def per_device_batch(eval_batch_size: int, num_devices: int, split_sizes) -> int:
  """The per-device batch of the evaluation step: ``eval_batch_size // num_devices``, or,
  when every split it evaluates is smaller than ``eval_batch_size``, just enough for the
  largest (``ceil(largest / num_devices)``): every batch is padded to this size, so a small
  split is not padded to the full batch. Measured (ResNet-18 at 224 px, 14 classes, one
  CPU device): the compiled eval step peaks at 2.47 GiB for 500 images, 0.35 GiB for 64;
  a 336-image Clothing1M release has val/test splits of a few dozen.

  Args:
    eval_batch_size: ``config.eval_batch_size`` (global).
    num_devices: data-parallel devices of all processes.
    split_sizes: the lengths of the splits evaluated with this batch.
  """
  largest = max(split_sizes, default=eval_batch_size)
  if largest >= eval_batch_size:
    return max(1, eval_batch_size // num_devices)
  return max(1, -(-largest // num_devices))


def evaluate(p_eval, p_params, split: data.Split, batch_size: int, num_devices: int):
  """Per-class correct counts and loss sums over a whole split (host values).

  Every process walks the same global batches of ``batch_size`` per device and reads and
  feeds only its own rows; the ``psum`` in the eval step adds all devices of all processes.
  """
  total = None
  num_local = num_devices // jax.process_count()
  global_batch = batch_size * num_devices
  reporter = progress.Reporter("evaluation", -(-len(split.y) // global_batch), "batches")
  for i, batch in enumerate(data.iterate_batches(split, global_batch, jax.process_count(),
                                                 jax.process_index())):
    x, y, mask = shard(batch, num_local)
    res = p_eval(p_params, x, y, mask)
    res = jax.tree.map(lambda a: np.asarray(a[0], np.float64), res)
    total = res if total is None else jax.tree.map(np.add, total, res)
    reporter.update(i + 1)
  return total


def evaluate_summary(p_eval, p_params, split: data.Split, batch_size: int,
                     num_devices: int, group_of=None) -> dict:
  """:func:`reducr_jax.core.metrics.summary` of the accuracy of ``p_params`` on a split; with
  ``group_of`` (int [C], ``config.dataset.groups``) also
  :func:`reducr_jax.core.metrics.group_summary` (worst-group and per-group accuracy)."""
  correct, _ = evaluate(p_eval, p_params, split, batch_size, num_devices)
  stats = metrics.ClassSums(*correct)
  out = metrics.summary(stats)
  if group_of is not None:
    out.update(metrics.group_summary(stats, group_of))
  return out


def initial_best(variables) -> dict:
  """The kept-model record before any evaluation (any first score beats -1):
  ``{"params", "worst_val" (the kept model's score under the model-selection rule), "step"}``."""
  return {"params": variables, "worst_val": np.float32(-1.0), "step": np.int32(0)}


def val_and_test(p_eval, p_params, splits, batch_size: int, num_devices: int,
                 group_of=None) -> tuple[dict, dict]:
  """:func:`evaluate_summary` of the val and the test split (``splits``: ``data.Splits``)."""
  return tuple(evaluate_summary(p_eval, p_params, split, batch_size, num_devices, group_of)
               for split in (splits.val, splits.test))


# Which checkpoint of the target model is kept and evaluated (``config.model_selection``).
MODEL_SELECTION = config_schema.MODEL_SELECTIONS   # the allowed values live in the schema


def model_score(val: dict, rule: str) -> float:
  """The validation score a model-selection ``rule`` maximises: ``"worst_class"`` → the
  worst-class accuracy (REDUCR App. A.6; official ``callbacks/worst_val_acc.yaml``),
  ``"average"`` → the accuracy over all points (official ``callbacks/default.yaml``,
  ``val_acc_epoch``), ``"final"`` → the accuracy too (only logged: the last model is kept)."""
  if rule == "worst_class":     # with class groups (config.dataset.groups): worst group
    return float(val.get("worst_group_accuracy", val["worst_class_accuracy"]))
  if rule in ("average", "final"):
    return float(val["accuracy"])
  raise ValueError(f"rule must be one of {list(MODEL_SELECTION[:3])}, got {rule!r}")


def keep_best(best: dict, val: dict, p_variables, step: int,
              rule: str = "worst_class") -> dict:
  """The model to keep: ``p_variables`` (replicated) at ``step`` when its
  :func:`model_score` under ``rule`` beats ``best["worst_val"]`` (strictly: the earliest of
  equal scores is kept, like Lightning's ``ModelCheckpoint``), or always for ``"final"``;
  else ``best`` unchanged. ``best["worst_val"]`` holds the kept model's score under
  ``rule`` (the key keeps the checkpoint layout of runs made before the rule existed).
  ``rule``: ``"worst_class"`` | ``"average"`` | ``"final"`` (``"auto"`` is resolved first,
  :func:`reducr_jax.selectors.model_selection`)."""
  score = model_score(val, rule)
  if rule != "final" and score <= float(best["worst_val"]):
    return best
  return {"params": sharding.first_replica(p_variables),
          "worst_val": np.float32(score), "step": np.int32(step)}
