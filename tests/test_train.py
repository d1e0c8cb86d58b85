"""The trainer end to end: learning, resume equality, 1-vs-8 devices, NaN, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import config_validation
from reducr_jax.config import configuration
from reducr_jax.train import sharding
from reducr_jax.train import optimizers
from reducr_jax.train import selection_step
from reducr_jax.train import train_state
from reducr_jax.train import trainer as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def tiny_config(**overrides):
  """digits, a small MLP, B=80 (10 per fake device), k=8 (1 per device)."""
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  config.dataset.name = "digits"
  config.dataset.imbalance_fraction = 0.05
  config.model.hidden = (32,)
  config.batch_size = 80
  config.num_steps = 60
  config.experts.num_steps = 60
  config.experts.batch_size = 64
  config.experts.eval_every = 30
  config.eval_every = 20
  config.log_every = 10
  config.checkpoint_every = 20
  config.eval_batch_size = 128
  config.selection.eta = 0.01
  return configuration.with_overrides(config, overrides)


def test_end_to_end_learns_and_writes_results(tmp_path):
  config = tiny_config(num_steps=150, **{"optimizer.learning_rate": 3e-3})
  results = train.train_and_evaluate(config, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["method"] == "reducr"
  for split in ("val", "test"):
    assert set(on_disk[split]) >= {"accuracy", "worst_class_accuracy", "per_class_accuracy"}
    assert len(on_disk[split]["per_class_accuracy"]) == 10
  assert on_disk["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
  assert results["test"]["accuracy"] > 0.6            # chance is 0.1
  w = np.asarray(results["class_weights"])
  assert w.shape == (10,) and abs(w.sum() - 1) < 1e-5 and np.all(w >= 0)
  log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in log if "train/class_weights" in r]
  assert [r["step"] for r in train_records] == list(range(10, 151, 10))
  assert all(sum(r["train/selected_class_counts"]) == 8 for r in train_records)
  assert any(r["step"] == 150 and "val/worst_class_accuracy" in r for r in log)
  assert os.listdir(tmp_path / "tensorboard")
  # Experts were cached and are reused by a second run in the same workdir.
  cached = os.listdir(tmp_path / "experts")
  assert len(cached) == 1
  mtime = os.path.getmtime(tmp_path / "experts" / cached[0])
  train.train_and_evaluate(config, str(tmp_path))
  assert os.path.getmtime(tmp_path / "experts" / cached[0]) == mtime


# Every rule and reweighting as the trainer runs it, recorded with these overrides of
# tiny_config(num_steps=12, log_every=1, eval_every=6, checkpoint_every=12) on the 8 fake
# devices: a refactor must leave the selections (class counts of the selected points at
# every step), the MWU class weights and the kept model's per-class accuracies unchanged.
# First recorded at 8afda95, before selection moved into the registry (which reproduced
# them bitwise); re-recorded when the seed offsets became named rng streams
# (reducr_jax.core.rng_streams) and the official variants of issue #17 were added, both of which
# change every random draw. Class weights to rtol 1e-5: stage 1 pmean-s the experts'
# gradients over the devices, so the 7th digit depends on the summation order.
# To re-record after an intended change of numbers (say why in the commit):
#   REDUCR_RECORD_GOLDEN=1 python -m pytest tests/test_train.py -k recorded_run
GOLDEN = os.path.join(REPO, "tests", "data", "golden_runs.json")
VARIANTS = {
    "reducr": {},
    "uniform": {"selection.method": "uniform"},
    "train_loss": {"selection.method": "train_loss"},
    "rho_loss": {"selection.method": "rho_loss"},
    "reducr_online_ema": {"experts.losses": "online", "selection.holdout_loss": "ema"},
    "reducr_multihead_soft": {"experts.losses": "multihead", "selection.soft_temperature": 0.1},
    "reducr_no_expert_no_holdout": {"selection.use_expert": False,
                                    "selection.use_holdout": False},
    "reducr_no_model_loss": {"selection.use_model_loss": False, "selection.clip": False},
    "reducr_meta": {"reweight": "meta", "meta.val_batch_size": 16},
    "uniform_group_dro": {"selection.method": "uniform", "reweight": "group_dro"},
    "rho_loss_meta_nested": {"selection.method": "rho_loss", "reweight": "meta",
                             "meta.val_batch_size": 16, "meta.method": "nested_grad"},
}


def _record_golden(name: str, record: dict) -> None:
  golden = {}
  if os.path.exists(GOLDEN):
    with open(GOLDEN) as f:
      golden = json.load(f)
  golden[name] = record
  with open(GOLDEN, "w") as f:
    json.dump(dict(sorted(golden.items())), f, indent=1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_method_and_variant_matches_its_recorded_run(tmp_path, name):
  config = tiny_config(num_steps=12, log_every=1, eval_every=6, checkpoint_every=12,
                       **VARIANTS[name])
  results = train.train_and_evaluate(config, str(tmp_path))
  log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  records = [r for r in log if "train/selected_class_counts" in r]
  run = {"selected_class_counts": [r["train/selected_class_counts"] for r in records],
         "class_weights": [r["train/class_weights"] for r in records],
         "final_class_weights": results["class_weights"],
         "test_per_class_accuracy": results["test"]["per_class_accuracy"],
         "val_per_class_accuracy": results["val"]["per_class_accuracy"],
         "best_step": results["best_step"], "num_skipped": results["num_skipped"]}
  if os.environ.get("REDUCR_RECORD_GOLDEN"):
    _record_golden(name, run)
  with open(GOLDEN) as f:
    before = json.load(f)[name]
  assert run["selected_class_counts"] == before["selected_class_counts"]
  np.testing.assert_allclose(run["class_weights"], before["class_weights"], rtol=1e-5, atol=0)
  np.testing.assert_allclose(run["final_class_weights"], before["final_class_weights"],
                             rtol=1e-5, atol=0)
  assert run["test_per_class_accuracy"] == pytest.approx(before["test_per_class_accuracy"],
                                                         abs=1e-7)
  assert run["val_per_class_accuracy"] == pytest.approx(before["val_per_class_accuracy"],
                                                        abs=1e-7)
  assert run["best_step"] == before["best_step"]
  assert run["num_skipped"] == before["num_skipped"] == 0
  assert results["method"] == config.selection.method


def _step_inputs(config, num_devices, unmapped=False):
  """A state, the pmapped step and one global batch for the given device count
  (``unmapped``: one device's state and the jitted step with ``axis_name=None``)."""
  from reducr_jax import data, models  # pylint: disable=g-import-not-at-top
  import flax.jax_utils  # pylint: disable=g-import-not-at-top
  splits = data.make_splits(config.dataset, config.seed)
  model = models.create_model(config.model, 10)
  apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  devices = jax.local_devices()[:num_devices]
  tx = optimizers.make_optimizer(config.optimizer)
  cfg = train_state.StepConfig.from_config(config, 10, num_devices, "table")
  state = train_state.init_state(jax.random.PRNGKey(0),
                           lambda r: model.init(r, jnp.zeros((1, 64)))["params"], tx, cfg,
                           jax.random.PRNGKey(1))
  state = state._replace(holdout_loss=jnp.linspace(0.5, 2.5, 10))
  step = selection_step.make_train_step(apply_fn, None, tx, cfg, devices)
  if unmapped:
    step = jax.jit(functools.partial(selection_step.train_step, model=apply_fn, ref_loss_fn=None,
                                     tx=tx, cfg=cfg, axis_name=None))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(5):
    idx = rng.choice(len(splits.train), config.batch_size, replace=False)
    batches.append({"x": splits.train.x[idx], "y": splits.train.y[idx],
                    "ref_losses": rng.uniform(0, 2, (config.batch_size, 10)).astype(np.float32)})
  return (state if unmapped else flax.jax_utils.replicate(state, devices)), step, batches


def _run_steps(num_devices, batches_override=None):
  config = tiny_config()
  p_state, step, batches = _step_inputs(config, num_devices)
  batches = batches_override or batches
  sels, weights = [], []
  for batch in batches:
    p_state, m = step(p_state, sharding.shard(batch, num_devices), None)  # pylint: disable=protected-access
    sels.append(np.asarray(m["selected_indices"]))
    weights.append(np.asarray(m["class_weights"]))
  return p_state, sels, weights


def test_one_and_eight_devices_agree():
  assert jax.local_device_count() == 8
  s1, sel1, w1 = _run_steps(1)
  s8, sel8, w8 = _run_steps(8)
  for a, b in zip(sel1, sel8):
    assert np.all(b == b[0]), "every device must hold the same global selection"
    np.testing.assert_array_equal(a[0], b[0])
  for a, b in zip(w1, w8):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
    np.testing.assert_allclose(b, np.broadcast_to(b[0], b.shape), rtol=0, atol=0)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-4, atol=1e-6)


def test_train_step_without_a_mapped_axis_equals_the_one_device_pmap():
  # axis_name=None under jit (no pmap): gathers, sums and the row exchange are the
  # identity, so 5 steps give the 1-device pmapped step's selections, losses and params.
  config = tiny_config()
  p_state, p_step, batches = _step_inputs(config, 1)
  state, step, _ = _step_inputs(config, 1, unmapped=True)
  for batch in batches:
    p_state, pm = p_step(p_state, sharding.shard(batch, 1), None)
    state, m = step(state, batch, None)
    np.testing.assert_array_equal(np.asarray(m["selected_indices"]),
                                  np.asarray(pm["selected_indices"][0]))
    np.testing.assert_allclose(np.asarray(m["class_weights"]),
                               np.asarray(pm["class_weights"][0]), rtol=1e-6)
    np.testing.assert_allclose(float(m["selected_loss"]), float(pm["selected_loss"][0]),
                               rtol=1e-6)
  assert int(state.step) == 5 and int(state.num_skipped) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b[0]), rtol=1e-5, atol=1e-7)


def test_train_step_without_a_mapped_axis_needs_one_device():
  cfg = train_state.StepConfig.from_config(tiny_config(), 10, 8, "table")
  with pytest.raises(ValueError, match="cfg.num_devices must be 1, got 8"):
    selection_step.train_step(None, {}, None, model=None, ref_loss_fn=None, tx=None, cfg=cfg,
                     axis_name=None)


def test_nan_batch_is_skipped_and_counted():
  config = tiny_config()
  p_state, step, batches = _step_inputs(config, 8)
  before = jax.tree.map(np.asarray, p_state)
  bad = dict(batches[0])
  bad["x"] = bad["x"].copy()
  bad["x"][:] = np.nan
  p_state, m = step(p_state, sharding.shard(bad, 8), None)  # pylint: disable=protected-access
  assert int(m["skipped"][0]) == 1 and int(p_state.num_skipped[0]) == 1
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(p_state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  np.testing.assert_array_equal(before.selector_state.log_w,
                                np.asarray(p_state.selector_state.log_w))
  p_state, m = step(p_state, sharding.shard(batches[1], 8), None)  # pylint: disable=protected-access
  assert int(m["skipped"][0]) == 0 and int(p_state.num_skipped[0]) == 1
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p_state.params))


MAIN = [sys.executable, "-m", "reducr_jax.main", "--config=configs/default.py"]
TINY_FLAGS = ["--config.dataset.name=digits", "--config.dataset.imbalance_fraction=0.05",
              "--config.model.hidden=(32,)", "--config.batch_size=80",
              "--config.experts.num_steps=60", "--config.experts.eval_every=30",
              "--config.eval_every=20", "--config.log_every=10", "--config.num_devices=1"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def test_killed_run_resumes_to_identical_results(tmp_path):
  flags = TINY_FLAGS + ["--config.num_steps=600", "--config.checkpoint_every=50"]
  ref = tmp_path / "uninterrupted"
  subprocess.run(MAIN + flags + [f"--workdir={ref}"], check=True, cwd=REPO, env=_env(),
                 capture_output=True)
  work = tmp_path / "interrupted"
  proc = subprocess.Popen(MAIN + flags + [f"--workdir={work}"], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    ckpts = work / "checkpoints"
    if ckpts.exists() and any(p.isdigit() for p in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (work / "results.json").exists(), "run finished before it could be killed"
  out = subprocess.run(MAIN + flags + [f"--workdir={work}"], check=True, cwd=REPO,
                       env=_env(), capture_output=True, text=True)
  assert "resumed from step" in out.stdout
  assert (work / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  assert (work / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@pytest.mark.parametrize("flag, message", [
    ("--config.selection.method=greedy", "config.selection.method must be one of ['reducr', 'rho_loss', 'train_loss', 'uniform', 'payoff', 'weighted', 'grad_norm', 'entropy', 'irreducible', 'uniform_after', 'bald', 'conditional_entropy'], got 'greedy'"),
    ("--config.dataset.name=imagenet", "config.dataset.name must be one of"),
    ("--config.selection.percent_selected=1.5", "config.selection.percent_selected must be in (0, 1], got 1.5"),
    ("--config.selection.percent_selected=0.001", "must give k >= 1"),
    ("--config.selection.methd=uniform", "error: --config.selection.methd: no such config field"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, flag, message):
  work = tmp_path / "w"
  out = subprocess.run(MAIN + TINY_FLAGS + [flag, f"--workdir={work}"], cwd=REPO, env=_env(),
                       capture_output=True, text=True)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], out.stderr
  assert not work.exists() or not os.listdir(work)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(configuration.ConfigError, match="--workdir .* is not a directory"):
    train.train_and_evaluate(tiny_config(), str(blocker))
  with pytest.raises(configuration.ConfigError, match="--workdir .* cannot be written"):
    train.train_and_evaluate(tiny_config(), str(blocker / "sub"))


@pytest.mark.parametrize("overrides, message", [
    ({"selection.eta": 0.0}, r"config.selection.eta must be in \(0, inf\]"),
    ({"experts.gamma": -1.0}, r"config.experts.gamma must be in \[0, inf\]"),
    ({"selection.holdout_loss": "batch"}, "config.selection.holdout_loss must be one of"),
    ({"experts.losses": "cached"}, "config.experts.losses must be one of"),
    ({"selection.use_model_loss": False, "selection.use_expert": False},
     "config.selection.use_expert and config.selection.use_model_loss cannot both be False"),
    ({"batch_size": 84}, "must be divisible by the number of devices"),
    ({"dataset.label_noise": 1.5}, "config.dataset.label_noise"),
    ({"reweight": "ren"}, "config.reweight must be one of"),
    ({"pruning.strategy": "el2"}, "config.pruning.strategy must be one of"),
    ({"pruning.density": 0.0}, r"config.pruning.density must be in \(0, 1\]"),
    ({"meta.val_batch_size": 12}, "config.meta.val_batch_size .* divisible"),
])
def test_config_validation(tmp_path, overrides, message):
  with pytest.raises(configuration.ConfigError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_uneven_split_over_devices_names_what_would_run():
  # B = 84, k = round(0.1 · 84) = 8 over 8 devices: 84 does not split. What runs: 1, 2 or
  # 4 devices (they divide 84 and 8), or B = 160 (k = 16; 88 → k 9, 96 → 10, … do not).
  with pytest.raises(configuration.ConfigError) as e:
    config_validation.validate_config(tiny_config(batch_size=84), 8)
  assert str(e.value) == (
      "config.batch_size (84) and k = 8 must be divisible by the number of devices (8): "
      "config.num_devices in [1, 2, 4] or config.batch_size=160 (k = 16)")


@pytest.mark.parametrize("reweight, meta_method", [
    ("class_balanced", "jvp"), ("meta", "jvp"), ("meta", "nested_grad"), ("group_dro", "jvp")])
def test_reweighting_runs_and_agrees_across_devices(reweight, meta_method):
  """Every reweighting trains under pmap and gives the single-device update on 8 devices."""
  def run(num_devices):
    config = tiny_config(reweight=reweight, **{"selection.method": "uniform",
                                               "meta.val_batch_size": 16,
                                               "meta.method": meta_method})
    from reducr_jax import data  # pylint: disable=g-import-not-at-top
    import flax.jax_utils  # pylint: disable=g-import-not-at-top
    splits = data.make_splits(config.dataset, config.seed)
    p_state, _, batches = _step_inputs(config, num_devices)
    from reducr_jax import models  # pylint: disable=g-import-not-at-top
    model = models.create_model(config.model, 10)
    cfg = train_state.StepConfig.from_config(config, 10, num_devices, None,
                                       np.bincount(splits.train.y, minlength=10))
    step = selection_step.make_train_step(lambda p, x: model.apply({"params": p}, x), None,
                                 optimizers.make_optimizer(config.optimizer), cfg,
                                 jax.local_devices()[:num_devices])
    for i, batch in enumerate(batches[:3]):
      batch = {"x": batch["x"], "y": batch["y"],
               "meta_x": splits.holdout.x[i * 16:(i + 1) * 16],
               "meta_y": splits.holdout.y[i * 16:(i + 1) * 16]}
      p_state, m = step(p_state, sharding.shard(batch, num_devices), None)  # pylint: disable=protected-access
    assert int(p_state.num_skipped[0]) == 0
    return p_state, m
  s1, m1 = run(1)
  s8, m8 = run(8)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m1["reweighter_class_weights"][0],
                             m8["reweighter_class_weights"][0], rtol=1e-5)
  if reweight == "group_dro":
    assert not np.allclose(m8["reweighter_class_weights"][0], 0.1)


def _resnet_steps(num_devices):
  """Two REDUCR steps of a tiny batch-norm ResNet with on-device augmentation."""
  from reducr_jax import models  # pylint: disable=g-import-not-at-top
  import flax.jax_utils  # pylint: disable=g-import-not-at-top
  from reducr_jax.models.resnet import ResNet18  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"batch_size": 32, "selection.percent_selected": 0.25,
                          "dataset.augment": "crop_flip"})
  x0 = np.zeros((1, 8, 8, 3), np.uint8)
  fns = models.model_fns(ResNet18(num_outputs=4, width=4, stage_sizes=(1, 1)), x0,
                         axis_name=selection_step.AXIS, init_impl="rbg")
  devices = jax.local_devices()[:num_devices]
  tx = optimizers.make_optimizer(config.optimizer)
  cfg = train_state.StepConfig.from_config(config, 4, num_devices, "table")
  state = train_state.init_state(jax.random.PRNGKey(0), jax.jit(fns.init), tx, cfg,
                           jax.random.PRNGKey(1))
  step = selection_step.make_train_step(fns, None, tx, cfg, devices)
  rng = np.random.default_rng(0)
  p_state = flax.jax_utils.replicate(state, devices)
  sels = []
  for _ in range(2):
    batch = {"x": rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
             "y": rng.integers(0, 4, 32).astype(np.int32),
             "ref_losses": rng.uniform(0, 2, (32, 4)).astype(np.float32)}
    p_state, m = step(p_state, sharding.shard(batch, num_devices), None)  # pylint: disable=protected-access
    sels.append(np.asarray(m["selected_indices"][0]))
  return jax.tree.map(lambda a: np.asarray(a)[0], p_state), sels, state


@pytest.mark.slow
def test_batch_norm_resnet_step_is_the_same_on_one_and_eight_devices():
  """Cross-device batch statistics, gradients through them, the reduce-scatter of the
  selected inputs and the per-example augmentation all equal the one-device step."""
  s1, sel1, init = _resnet_steps(1)
  s8, sel8, _ = _resnet_steps(8)
  for a, b in zip(sel1, sel8):
    np.testing.assert_array_equal(a, b)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       s1.params, init.params)
  assert max(jax.tree.leaves(moved)) > 1e-3                     # the step did train
  for tree1, tree8 in ((s1.params, s8.params), (s1.model_state, s8.model_state)):
    for a, b in zip(jax.tree.leaves(tree1), jax.tree.leaves(tree8)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  stats = s1.model_state["batch_stats"]["bn1"]
  assert not np.allclose(stats["mean"], 0.0)                   # running stats were updated


def test_fewer_devices_than_the_process_has(tmp_path):
  """config.num_devices=2 of 8: the kept state and weights have no stray device axis."""
  config = tiny_config(num_steps=10, num_devices=2, eval_every=5, checkpoint_every=5)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert np.shape(results["class_weights"]) == (10,)
  np.testing.assert_allclose(np.sum(results["class_weights"]), 1.0, rtol=1e-5)
  assert len(results["test"]["per_class_accuracy"]) == 10


def test_eta_auto_is_the_anytime_schedule_and_reported(tmp_path, capsys):
  config = tiny_config(num_steps=10, eval_every=10, checkpoint_every=10,
                       **{"selection.eta": "auto"})
  results = train.train_and_evaluate(config, str(tmp_path))
  # k = round(0.1 · 80) = 8, C = 10: η_t = (1/8) √(8 / (t ln 10)), η_1 = 0.232995,
  # η_T = η_10 = 0.0736796.
  assert results["eta"] == {"schedule": "anytime", "eta_1": pytest.approx(0.232995, rel=1e-5),
                            "eta_T": pytest.approx(0.0736796, rel=1e-5), "num_updates": 10}
  assert results["config"]["selection"]["eta"] == "auto"
  out = capsys.readouterr().out
  assert "selection.eta = auto -> anytime eta_t = 0.233/sqrt(t)" in out
  # Each stage's time is printed whatever the log verbosity.
  for line in ("stage 1 (reference models and their losses) in ",
               "stage 2: 10 training steps in ", "stage 3: final evaluation in "):
    assert line in out, (line, out)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["eta"] == results["eta"] and on_disk["config"]["selection"]["eta"] == "auto"


def test_eval_batch_is_no_larger_than_the_largest_split_needs():
  """Every eval batch is padded to the per-device batch: a small split is not padded to
  config.eval_batch_size (the default config's splits: holdout 330, val 360, test 359)."""
  from reducr_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  assert evaluation.per_device_batch(512, 1, [330, 360, 359]) == 360
  assert evaluation.per_device_batch(512, 8, [330, 360, 359]) == 45      # ceil(360 / 8)
  assert evaluation.per_device_batch(512, 8, [1000, 10]) == 64           # as before: 512 // 8
  assert evaluation.per_device_batch(512, 8, [512]) == 64
  assert evaluation.per_device_batch(500, 1, [33, 40, 12]) == 40
  assert evaluation.per_device_batch(4, 8, [3]) == 1
