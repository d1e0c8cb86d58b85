"""Bad input of every kind: each case asserts the one-line error or the documented behaviour.

CLI (subprocesses, each fails before anything trains), configs (every float field with
NaN/±inf, sizes <= 0, impossible values, data-dependent limits), workdirs (paths, lock,
recorded config) and the pure functions (NaN scores, non-finite η, labels >= C, caches).
"""

import errno
import importlib
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reducr_jax.run import caches
from reducr_jax.run import checkpointing
from reducr_jax.core import class_weighted_losses
from reducr_jax.config import configuration
from reducr_jax.core import metrics
from reducr_jax.core import mwu
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.config import size_checks
from reducr_jax.core import stacked_experts
from reducr_jax.config import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO, "configs", "default.py")


def default_config(**overrides):
  return configuration.with_overrides(configuration.load_config(DEFAULT), overrides)


def _leaves(node, prefix=""):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


# selection.eta (default 1e-2) is an object-typed field: it takes "auto" too.
FLOAT_FIELDS = sorted(name for name, v in _leaves(configuration.load_config(DEFAULT))
                      if isinstance(v, float) or name == "selection.eta")


def one_line(e) -> str:
  text = str(e.value)
  assert "\n" not in text, text
  return text


# --------------------------------------------------------------------------------------
# Configs.


def test_every_float_field_is_covered():
  assert len(FLOAT_FIELDS) >= 15, FLOAT_FIELDS
  assert "selection.eta" in FLOAT_FIELDS and "optimizer.learning_rate" in FLOAT_FIELDS


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_non_finite_float_field_is_one_line(field, bad):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(default_config(**{field: bad}), 8)
  assert f"config.{field} must be a finite number" in one_line(e)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_in_a_tuple_field(bad):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(default_config(**{"dataset.fractions": (0.4, bad, 0.2, 0.2)}), 8)
  assert "config.dataset.fractions[1] must be a finite number" in one_line(e)


SIZE_FIELDS = ["batch_size", "num_steps", "experts.num_steps", "experts.batch_size",
               "experts.eval_every", "eval_every", "eval_batch_size", "log_every",
               "checkpoint_every", "meta.val_batch_size", "pruning.batch_size",
               "pruning.num_inits", "pruning.score_epochs", "max_consecutive_skipped"]


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_size_field_below_one_is_one_line(field, value):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(default_config(**{field: value}), 8)
  assert f"config.{field}" in one_line(e)


@pytest.mark.parametrize("overrides, message", [
    ({"model.hidden": (0,)}, "config.model.hidden must hold layer widths >= 1"),
    ({"model.hidden": (32, 0)}, "config.model.hidden must hold layer widths >= 1"),
    ({"model.hidden": (-4,)}, "config.model.hidden must hold layer widths >= 1"),
    ({"model.hidden": (1.5,)}, "config.model.hidden must hold layer widths >= 1"),
    ({"selection.percent_selected": 0.0}, "config.selection.percent_selected must be in"),
    ({"selection.percent_selected": 1.5}, "config.selection.percent_selected must be in"),
    ({"pruning.density": 0.0}, "config.pruning.density must be in"),
    ({"pruning.density": 2.0}, "config.pruning.density must be in"),
    ({"selection.ema_decay": 1.0}, "config.selection.ema_decay must be in"),
    ({"selection.eta": -1.0}, "config.selection.eta must be in"),
    ({"selection.eta": "automatic"}, "config.selection.eta must be a number > 0 or 'auto', got 'automatic'"),
    ({"selection.eta": "nan"}, "config.selection.eta must be a finite number, got nan"),
    ({"dataset.num_samples": 8000}, "config.dataset.num_samples applies to mnist1d only"),
    ({"dataset.name": "mnist1d", "dataset.num_samples": 10}, "config.dataset.num_samples must be -1 (5000) or an int >= 100"),
    ({"selection.selection_pressure": 1.0}, "config.selection.selection_pressure"),
    ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate must be in"),
    ({"optimizer.weight_decay": -0.1}, "config.optimizer.weight_decay must be in"),
    ({"experts.learning_rate": 0.0}, "config.experts.learning_rate must be in"),
    ({"seed": -1}, "config.seed must be in"),
    ({"dataset.label_noise": 1.5}, "config.dataset.label_noise"),
    ({"dataset.imbalance_fraction": -0.5}, "config.dataset.imbalance_fraction"),
    ({"dataset.imbalance_mode": "oversample"}, "config.dataset.imbalance_mode must be one of"),
    ({"dataset.imbalance_mode": "weighted_sampler",
      "dataset.imbalance_splits": ("train", "val")}, "config.dataset.imbalance_splits must"),
    ({"dataset.label_noise_mode": "other"}, "config.dataset.label_noise_mode must be one of"),
    ({"dataset.label_noise_mode": "structured", "dataset.classes": (3, 5),
      "dataset.imbalance_class": -1},
     "config.dataset.label_noise_mode='structured' flips classes 3, 4, 9 into 5, 9, 7"),
    ({"model.dropout_rate": 1.0}, "config.model.dropout_rate must be a number in [0, 1), got 1.0"),
    ({"selection.mc_passes": -1}, "config.selection.mc_passes must be in [0, inf], got -1"),
    ({"selection.method": "bald"}, "config.selection.method='bald' needs MC dropout"),
    ({"experts.double_irreducible": True, "experts.losses": "multihead"},
     "config.experts.double_irreducible=True needs config.experts.losses='precomputed'"),
    ({"dataset.split_mode": "fixed"}, "config.dataset.split_mode must be one of"),
    ({"dataset.split_mode": "official"}, "config.dataset.split_mode must be 'random' for"),
    ({"dataset.groups": (0, 1)}, "config.dataset.groups must be ()"),
    ({"dataset.groups": (0, 0, 0, 0, 0, 1, 1, 1, 1, 1), "reweight": "meta"},
     "config.reweight must be 'none' with config.dataset.groups"),
    ({"dataset.groups": (0, 0, 0, 0, 0, 2, 2, 2, 2, 2)}, "config.dataset.groups must be ()"),
    ({"selection.holdout_every": 0}, "config.selection.holdout_every must be -1"),
    ({"prefetch": -1}, "config.prefetch must be in"),
    ({"experts.gamma": -1.0}, "config.experts.gamma must be in"),
    ({"experts.select_on": "holdout"},
     "config.experts.select_on must be one of ['val', 'train_pool'], got 'holdout'"),
    ({"experts.loss_normalisation": "sum"},
     "config.experts.loss_normalisation must be one of ['mean', 'weight_sum'], got 'sum'"),
    ({"model_selection": "best"},
     "config.model_selection must be one of ['worst_class', 'average', 'final', 'auto']"),
    ({"optimizer.schedule": "step"}, "config.optimizer.schedule must be one of ['constant', "
                                     "'cosine', 'warmup_cosine', 'linear'], got 'step'"),
    ({"optimizer.warmup_steps": -1}, "config.optimizer.warmup_steps must be in [0, inf]"),
    ({"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 1500},
     "config.optimizer.warmup_steps (1500) must be < config.num_steps (1500)"),
    ({"optimizer.learning_rate_by_method": {"rho": 1e-5}},
     "config.optimizer.learning_rate_by_method key must be one of"),
    ({"optimizer.learning_rate_by_method": {"rho_loss": 0.0}},
     "config.optimizer.learning_rate_by_method.rho_loss must be in (0, inf]"),
    ({"selection.k_rounding": "ceil"},
     "config.selection.k_rounding must be one of ['round', 'floor'], got 'ceil'"),
    ({"selection.holdout_source": "train"},
     "config.selection.holdout_source must be one of ['holdout', 'val'], got 'train'"),
])
def test_impossible_value_is_one_line(overrides, message):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(default_config(**overrides), 8)
  assert message in one_line(e)


def test_eta_auto_is_valid_and_resolves_to_the_anytime_schedule():
  config = default_config(**{"selection.eta": "auto"})
  configuration.validate_config(config, 8)
  resolved, eta = configuration.resolve_eta(config, 10)
  # k = 0.1 · 320 = 32, C = 10: η_t = (1/k) √(8 / (t ln C)); η_1 = (1/32) √(8 / ln 10)
  # = 0.0582489, η_T at T = 1500: (1/32) √(8 / 3453.88) = 1.50398e-3.
  assert eta["schedule"] == "anytime" and eta["num_updates"] == 1500
  assert eta["eta_1"] == pytest.approx(0.0582489, rel=1e-5)
  assert eta["eta_T"] == pytest.approx(1.50398e-3, rel=1e-5)
  assert resolved is config and config.selection.eta == "auto"     # the rule reads "auto"
  assert configuration.resolve_eta(default_config(**{"selection.eta": 3e-2}), 10)[1] == 3e-2
  assert configuration.resolve_eta(default_config(), 10)[1] == 1e-2       # the default
  # uniform_after stops the MWU at uniform_after_steps: T = 500 updates there.
  after = default_config(**{"selection.method": "uniform_after", "selection.eta": "auto"})
  assert configuration.resolve_eta(after, 10)[1]["num_updates"] == min(
      1500, after.selection.uniform_after_steps)


def test_floor_rounding_gives_one_k_to_selection_and_eta():
  """B = 35, 10 %: 'floor' selects int(3.5) = 3 points, and η='auto' is computed for those
  3 (the same η as a config whose k is 3 by rounding), not for round(3.5) = 4."""
  auto = {"selection.eta": "auto"}         # the default η is a number, which reads no k
  floor = default_config(**{"batch_size": 35, "selection.k_rounding": "floor"}, **auto)
  configuration.validate_config(floor, 1)
  assert configuration.num_selected(floor) == 3
  assert configuration.num_selected(default_config(batch_size=35)) == 4
  three = default_config(**{"batch_size": 30}, **auto)          # round(3.0) = 3
  assert configuration.resolve_eta(floor, 10)[1] == configuration.resolve_eta(three, 10)[1]
  assert configuration.resolve_eta(floor, 10)[1] != configuration.resolve_eta(
      default_config(batch_size=35, **auto), 10)[1]


@pytest.mark.parametrize("rounding", ["floor", "round"])
def test_k_of_zero_is_one_line_about_k(rounding):
  config = default_config(**{"batch_size": 35, "selection.percent_selected": 0.01,
                             "selection.k_rounding": rounding})
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(config, 1)
  text = one_line(e)
  assert "config.selection.percent_selected · config.batch_size must give k >= 1" in text
  assert f"k = {rounding}(0.01 · 35) = 0 (config.selection.k_rounding='{rounding}')" in text


def test_default_config_is_valid_and_has_the_skip_limit():
  config = default_config()
  configuration.validate_config(config, 8)
  assert config.max_consecutive_skipped == 100


@pytest.fixture(scope="module")
def digits_splits():
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  config = default_config()
  return data.make_splits(config.dataset, config.seed)


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 100_000}, "config.batch_size=100000 exceeds the 663 examples of the train split"),
    ({"experts.batch_size": 100_000}, "config.experts.batch_size=100000 exceeds the 330 examples of the holdout split"),
    ({"reweight": "meta", "meta.val_batch_size": 100_000}, "config.meta.val_batch_size=100000 exceeds"),
    ({"pruning.strategy": "random", "pruning.density": 0.0001}, "config.pruning.density=0.0001 keeps"),
    ({"pruning.strategy": "el2n", "pruning.batch_size": 100_000}, "config.pruning.batch_size=100000 exceeds"),
    ({"selection.holdout_loss": "ema", "batch_size": 500}, "config.batch_size=500 exceeds the 330 examples of the holdout (holdout_loss='ema')"),
])
def test_data_dependent_limits_are_one_line(digits_splits, overrides, message):
  with pytest.raises(configuration.ConfigError) as e:
    size_checks.check_batch_sizes(default_config(**overrides), digits_splits, 8)
  assert message in one_line(e)


@pytest.mark.parametrize("overrides, message", [
    ({"dataset.augment": "flip"}, "config.dataset.augment='flip' needs image examples [H, W, C], "
     "but dataset 'digits' has examples of shape (64,); use 'none'"),
    ({"dataset.augment": "crop_flip"}, "config.dataset.augment='crop_flip' needs image examples"),
    ({"selection.method": "weighted", "selection.class_weights": (1.0, 2.0)},
     "config.selection.class_weights must have one weight per class (10), got 2"),
])
def test_fields_only_the_data_can_check_are_one_line_before_stage_1(digits_splits, overrides,
                                                                    message):
  with pytest.raises(configuration.ConfigError) as e:
    size_checks.check_against_data(default_config(**overrides), digits_splits)
  assert message in one_line(e)
  size_checks.check_against_data(default_config(), digits_splits)


def test_data_dependent_limits_ignore_unused_fields(digits_splits):
  # experts are not trained for uniform selection, so their batch size does not matter.
  size_checks.check_batch_sizes(default_config(**{"selection.method": "uniform",
                                                  "experts.batch_size": 100_000}),
                                digits_splits, 8)


def test_pruning_that_empties_a_class_is_one_line(digits_splits):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  t = digits_splits.train
  keep = np.flatnonzero(t.y != 3)
  pruned = dataclasses.replace(digits_splits, train=data.Split(
      x=t.x[keep], y=t.y[keep], y_clean=t.y_clean[keep], index=t.index[keep]))
  with pytest.raises(configuration.ConfigError) as e:
    size_checks.check_pruned(default_config(**{"pruning.strategy": "drop"}),
                             digits_splits, pruned)
  assert "leaves no training example of class 3" in one_line(e)
  # No pruning, or a class that was already empty before pruning: not the pruning's doing.
  size_checks.check_pruned(default_config(), digits_splits, pruned)
  size_checks.check_pruned(default_config(**{"pruning.strategy": "drop"}), pruned, pruned)


def test_too_large_holdout_per_class_is_a_value_error():
  from reducr_jax import data  # pylint: disable=g-import-not-at-top
  config = default_config(**{"dataset.holdout_per_class": 10_000})
  with pytest.raises(ValueError, match="holdout_per_class"):
    data.make_splits(config.dataset, config.seed)   # the trainer turns it into ConfigError


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("def get_config(:\n", "cannot be loaded: SyntaxError: invalid syntax"),
    ("import no_such_module_xyz\n", "No module named 'no_such_module_xyz'"),
    ("def get_config():\n  return 5\n", "must return a ConfigDict"),
    ("x = 1\n", "defines no get_config() function"),
    ("", "defines no get_config() function"),
    ("def get_config():\n  raise RuntimeError('boom')\n", "cannot be loaded: RuntimeError: boom"),
])
def test_load_config_bad_file_is_one_line(tmp_path, content, message):
  path = tmp_path / "cfg.py"
  if content is not None:
    path.write_text(content)
  with pytest.raises(configuration.ConfigError) as e:
    configuration.load_config(str(path))
  assert message in one_line(e)


# --------------------------------------------------------------------------------------
# CLI: one line on stderr, exit status 2, nothing written.

MAIN = [sys.executable, "-m", "reducr_jax.main"]


def _cli(args, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(MAIN + args + [f"--workdir={tmp_path / 'w'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/nope.py"], "error: --config file configs/nope.py does not exist"),
    (["--config=BROKEN"], "cannot be loaded: invalid syntax"),
    (["--config=NOTCONFIG"], "must return a ConfigDict"),
    (["--config=configs/default.py", "--config.selection.eta=nan"], "error: config.selection.eta must be a finite number, got nan"),
    (["--config=configs/default.py", "--config.selection.eta=fast"], "error: config.selection.eta must be a number > 0 or 'auto', got 'fast'"),
    (["--config.num_steps=5"], "error: --config.num_steps overrides a field of the config file, but no --config=FILE is given"),
    (["--config=EMPTY"], "defines no get_config() function"),
    (["--config=NOGET"], "defines no get_config() function"),
    (["--config=configs/default.py:foo"], "cannot be loaded with argument 'foo' (get_config('foo')): TypeError: get_config() takes 0 positional arguments but 1 was given"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  notconfig = tmp_path / "notconfig.py"
  notconfig.write_text("def get_config():\n  return [1]\n")
  (tmp_path / "empty.py").write_text("")
  (tmp_path / "noget.py").write_text("def get_konfig():\n  return None\n")
  files = {"BROKEN": broken, "NOTCONFIG": notconfig, "EMPTY": tmp_path / "empty.py",
           "NOGET": tmp_path / "noget.py"}
  for name, path in files.items():
    args = [a.replace(name, str(path)) for a in args]
  out = _cli(args, tmp_path)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr
  assert len(lines) == 1 and message in lines[0], out.stderr
  assert not (tmp_path / "w").exists() or not os.listdir(tmp_path / "w")


# --------------------------------------------------------------------------------------
# Workdirs.


@pytest.mark.parametrize("make, message", [
    (lambda p: "", "--workdir must be a directory path"),
    (lambda p: str(_file(p)), "exists and is not a directory"),
    (lambda p: str(_file(p) / "sub"), "cannot be written"),
    (lambda p: "s3://bucket/run", "only gs:// is supported"),
    (lambda p: "http://host/run", "only gs:// is supported"),
])
def test_bad_workdir_is_one_line(tmp_path, make, message):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.check_workdir(make(tmp_path))
  assert message in one_line(e)


def _file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  return path


@pytest.mark.parametrize("url", ["gs://bucket/run", "gs://bucket/run/", "gs://b/a/b/c"])
def test_gs_workdir_is_accepted_after_one_read(url, monkeypatch):
  from etils import epath  # pylint: disable=g-import-not-at-top
  probed = []
  monkeypatch.setattr(type(epath.Path(url)), "exists", lambda self: probed.append(str(self)))
  assert configuration.check_workdir(url) == url.rstrip("/")
  assert probed == [url.rstrip("/")]


def test_unreachable_gs_workdir_is_one_line(monkeypatch, capfd):
  """No network: TensorFlow's GCS client raises a multi-line error and logs its retries in
  C++ on file descriptor 2; the run ends with one line."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  def unreachable(self):
    os.write(2, b"W0000 google_auth_provider.cc:196] All attempts to get a token failed\n")
    raise RuntimeError("Error executing an HTTP request: libcurl code 6 meaning 'Could not "
                       "resolve hostname'\n\twhen reading metadata of gs://b/run")
  monkeypatch.setattr(type(epath.Path("gs://b/run")), "exists", unreachable)
  with pytest.raises(configuration.ConfigError) as e:
    configuration.check_workdir("gs://b/run")
  assert one_line(e) == ("--workdir gs://b/run cannot be reached: RuntimeError: Error "
                         "executing an HTTP request: libcurl code 6 meaning 'Could not "
                         "resolve hostname'")
  assert "google_auth_provider" not in capfd.readouterr().err


@pytest.mark.parametrize("name, field", [("checkpoints", "--workdir"),
                                         ("experts", "config.experts.cache_dir"),
                                         ("pruning", "config.pruning.cache_dir")])
def test_output_dir_that_is_a_plain_file_is_one_line(tmp_path, name, field):
  (tmp_path / name).write_text("x")
  with pytest.raises(configuration.ConfigError) as e:
    configuration.check_output_dirs(default_config(), str(tmp_path))
  assert one_line(e) == (f"{tmp_path / name} ({field}) exists and is not a directory: move "
                         "the file away or choose another path")
  cache = tmp_path / "elsewhere"                       # a cache_dir set elsewhere: fine
  cache.mkdir()
  if name != "checkpoints":
    configuration.check_output_dirs(default_config(**{f"{name}.cache_dir": str(cache)}),
                                    str(tmp_path))


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, holder, age_s=0.0):
  path = workdir / workdir_lib.LOCK_NAME
  path.write_text(json.dumps(holder))
  if age_s:
    t = time.time() - age_s
    os.utime(path, (t, t))
  return path


def test_second_run_is_refused_naming_the_holder(tmp_path):
  with workdir_lib.Lock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirBusy) as e:
      workdir_lib.Lock(tmp_path)
  text = one_line(e)
  assert f"PID {os.getpid()} on host {socket.gethostname()}" in text
  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()          # released


def test_lock_of_a_live_process_on_this_host_is_refused(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, {"host": socket.gethostname(), "pid": proc.pid})
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"PID {proc.pid}"):
      workdir_lib.Lock(tmp_path)
  finally:
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("holder, age_s", [
    ("dead_pid", 0.0),                                               # same host, PID gone
    ({"host": "another-host", "pid": 1}, workdir_lib.STALE_AFTER_S + 60),  # no heartbeat
    ("garbage", workdir_lib.STALE_AFTER_S + 60),                      # unreadable, old
])
def test_stale_lock_is_taken_over(tmp_path, holder, age_s):
  if holder == "dead_pid":
    holder = {"host": socket.gethostname(), "pid": _dead_pid()}
  if holder == "garbage":
    path = tmp_path / workdir_lib.LOCK_NAME
    path.write_text("{not json")
    t = time.time() - age_s
    os.utime(path, (t, t))
  else:
    _write_lock(tmp_path, holder, age_s)
  with workdir_lib.Lock(tmp_path) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("holder", [{"host": "another-host", "pid": 1}, "garbage"])
def test_fresh_lock_of_another_host_is_refused(tmp_path, holder):
  if holder == "garbage":
    (tmp_path / workdir_lib.LOCK_NAME).write_text("{not json")
  else:
    _write_lock(tmp_path, holder)
  with pytest.raises(workdir_lib.WorkdirBusy):
    workdir_lib.Lock(tmp_path)


def test_lock_heartbeat_refreshes_the_file(tmp_path):
  lock = workdir_lib.Lock(tmp_path, heartbeat_s=0.05)
  try:
    t = time.time() - 1000
    os.utime(lock.path, (t, t))
    time.sleep(0.5)
    assert time.time() - lock.path.stat().mtime < 100
  finally:
    lock.release()


CHANGED = [("selection.method", "uniform"), ("seed", 1), ("model.hidden", (64,)),
           ("optimizer.learning_rate", 1e-2), ("selection.eta", 0.5), ("experts.gamma", 4.0),
           ("batch_size", 160), ("dataset.name", "mnist1d"), ("dataset.label_noise", 0.2),
           ("selection.percent_selected", 0.2), ("reweight", "meta"),
           ("pruning.strategy", "random"), ("eval_batch_size", 256),
           ("experts.num_steps", 10)]


def _started(tmp_path, config):
  """A workdir whose run recorded ``config`` and wrote a checkpoint step."""
  workdir_lib.check_config(tmp_path, config)
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)


@pytest.mark.parametrize("field, value", CHANGED)
def test_resume_with_a_run_changing_field_is_refused(tmp_path, field, value):
  _started(tmp_path, default_config())
  with pytest.raises(configuration.ConfigError) as e:
    workdir_lib.check_config(tmp_path, default_config(**{field: value}))
  assert f"holds a run with a different config: {field} (" in one_line(e)


def test_every_differing_field_is_listed(tmp_path):
  _started(tmp_path, default_config())
  with pytest.raises(configuration.ConfigError) as e:
    workdir_lib.check_config(tmp_path, default_config(
        **{"seed": 3, "selection.method": "uniform"}))
  assert "seed (0 -> 3), selection.method ('reducr' -> 'uniform')" in one_line(e)


RESUMABLE = [("num_steps", 3000), ("eval_every", 7), ("log_every", 3),
             ("checkpoint_every", 11), ("num_devices", 2), ("prefetch", 0),
             ("experts.cache_dir", "/tmp/shared"), ("pruning.cache_dir", "/tmp/p"),
             ("max_consecutive_skipped", 5)]


@pytest.mark.parametrize("field, value", RESUMABLE)
def test_resume_may_change_cadence_length_and_devices(tmp_path, field, value):
  assert field in workdir_lib.RESUMABLE_FIELDS
  _started(tmp_path, default_config())
  workdir_lib.check_config(tmp_path, default_config(**{field: value}))
  recorded = json.loads((tmp_path / workdir_lib.CONFIG_NAME).read_text())
  assert workdir_lib.flatten(recorded)[field] == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize("state", ["nothing", "results"])
def test_config_may_change_while_there_is_nothing_to_resume(tmp_path, state):
  """A run that stopped before its first checkpoint (e.g. on a bad batch size) does not
  lock the workdir to its config; once results exist, it does."""
  workdir_lib.check_config(tmp_path, default_config(batch_size=100_000))
  if state == "results":
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(configuration.ConfigError, match="batch_size"):
      workdir_lib.check_config(tmp_path, default_config())
  else:
    workdir_lib.check_config(tmp_path, default_config())
    assert json.loads((tmp_path / workdir_lib.CONFIG_NAME).read_text())["batch_size"] == 320


def test_num_steps_cannot_drop_below_the_checkpoint():
  with pytest.raises(configuration.ConfigError) as e:
    workdir_lib.check_num_steps(default_config(num_steps=100), 200)
  assert "can only be extended" in one_line(e)
  workdir_lib.check_num_steps(default_config(num_steps=300), 200)


def test_unreadable_recorded_config_is_replaced(tmp_path):
  (tmp_path / workdir_lib.CONFIG_NAME).write_text("{garbage")
  workdir_lib.check_config(tmp_path, default_config())
  assert json.loads((tmp_path / workdir_lib.CONFIG_NAME).read_text())["seed"] == 0


# --------------------------------------------------------------------------------------
# Caches and file writes.


def _damage(kind, path):
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
           if f != checkpointing.MANIFEST]
  path = pathlib.Path(max(files, key=os.path.getsize))     # the array data
  raw = path.read_bytes()
  if kind == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  elif kind == "flipped":
    b = bytearray(raw)
    for i in range(16):
      b[-1 - i] ^= 0xFF
    path.write_bytes(bytes(b))
  elif kind == "garbage":
    path.write_bytes(b"\x00garbage" * 10)
  elif kind == "empty":
    path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["truncated", "flipped", "garbage", "empty"])
def test_damaged_cache_is_reported_deleted_and_rebuilt(tmp_path, kind, caplog):
  path = tmp_path / "experts-abc"
  payload = {"params": {"w": np.arange(1000, dtype=np.float32)}, "best": np.float32(2.5)}
  checkpointing.write_cache(path, payload, "abc")
  got = checkpointing.read_cache(path, "abc")
  assert np.array_equal(got["params"]["w"], payload["params"]["w"]) and got["best"] == 2.5
  _damage(kind, path)
  with caplog.at_level("WARNING"):
    assert checkpointing.read_cache(path, "abc") is None
  assert not path.exists()
  assert any("is damaged" in r.getMessage() and str(path) in r.getMessage()
             for r in caplog.records)


def test_an_old_single_file_cache_is_deleted_with_one_line(tmp_path, caplog):
  old = tmp_path / "experts-abc.msgpack"
  old.write_bytes(b"reducr-cache v1 sha256=00\npayload")
  with caplog.at_level("WARNING"):
    assert checkpointing.read_cache(tmp_path / "experts-abc", "abc") is None
  assert not old.exists()
  assert [r.getMessage() for r in caplog.records] == [
      f"cache {old} is in the old single-file format; deleting it and rebuilding it as "
      f"{tmp_path / 'experts-abc'}"]


def test_missing_cache_is_none_silently(tmp_path):
  assert checkpointing.read_cache(tmp_path / "nope", "abc") is None


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, code):
  path = tmp_path / "results.json"
  real_open = type(caches.temp_name(path)).open

  def full_open(self, mode="r", *args, **kwargs):
    f = real_open(self, mode, *args, **kwargs)
    if "w" in mode:
      f.close()
      raise OSError(code, os.strerror(code))
    return f
  monkeypatch.setattr(type(caches.temp_name(path)), "open", full_open)
  with pytest.raises(caches.DiskFullError) as e:
    caches.atomic_write(path, b"{}")
  assert "disk full while writing" in one_line(e) and e.value.exit_code == 1
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  caches.atomic_write(path, b"{}")                 # the next try with space succeeds
  assert path.read_bytes() == b"{}" and os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize("name, removed", [
    ("experts-x.msgpack.tmp-{host}-{dead}", True),     # dead writer on this host
    ("experts-x.msgpack.tmp-{dead}", True),            # older naming, dead writer
    ("experts-x.msgpack.tmp-{host}-{me}", False),      # this (live) process
    ("experts-x.msgpack.tmp-other-host-1", False),     # another host, recent
    ("experts-x.msgpack", False),                      # not a temporary file
])
def test_stale_temp_files_are_removed(tmp_path, name, removed):
  name = name.format(host=socket.gethostname(), dead=_dead_pid(), me=os.getpid())
  (tmp_path / name).write_text("partial")
  caches.remove_stale_temp_files(tmp_path)
  assert (tmp_path / name).exists() != removed


def test_old_temp_file_of_another_host_is_removed(tmp_path):
  path = tmp_path / "scores.npz.tmp-other-host-12"
  path.write_text("partial")
  t = time.time() - caches.FOREIGN_TMP_AGE_S - 60
  os.utime(path, (t, t))
  assert caches.remove_stale_temp_files(tmp_path) == [path.name]


# --------------------------------------------------------------------------------------
# Pure functions.


@pytest.mark.parametrize("nan_at", [[0], [3], [7], [0, 1], [2, 5, 6], [7, 0]])
@pytest.mark.parametrize("k", [1, 3])
def test_top_k_never_selects_nan(nan_at, k):
  scores = np.arange(8, dtype=np.float32)
  scores[nan_at] = np.nan
  sel = np.asarray(selection.top_k(jnp.asarray(scores), k))
  assert not set(sel.tolist()) & set(nan_at)
  expected = [i for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")][:k]
  assert sel.tolist() == expected


def test_top_k_with_fewer_than_k_numbers_fills_with_nan_points():
  scores = jnp.asarray([np.nan, 1.0, np.nan, np.nan])
  assert np.asarray(selection.top_k(scores, 2)).tolist() == [1, 0]


def test_top_k_nan_ranks_like_minus_inf_under_jit():
  scores = jnp.asarray([np.nan, -np.inf, 0.0, np.nan])
  sel = jax.jit(selection.top_k, static_argnums=1)(scores, 2)
  assert np.asarray(sel).tolist()[0] == 2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("temperature", [0.0, 0.5, 10.0])
def test_soft_top_k_never_draws_nan(seed, temperature):
  scores = jnp.asarray([np.nan, 0.1, np.nan, 0.3, 0.2, np.nan, 0.0, np.nan])
  sel = np.asarray(selection.soft_top_k(jax.random.PRNGKey(seed), scores, 4, temperature))
  assert set(sel.tolist()) == {1, 3, 4, 6}


@pytest.mark.parametrize("eta", [math.nan, math.inf, -math.inf, np.float32("nan"),
                                 np.float64("inf"), 0.0, -1.0, np.asarray(np.nan)],
                         ids=["nan", "inf", "-inf", "f32nan", "f64inf", "zero", "neg", "arraynan"])
def test_mwu_update_rejects_bad_eta(eta):
  with pytest.raises(ValueError) as e:
    mwu.update(mwu.init(3), jnp.ones(3), eta)
  assert one_line(e).startswith("eta must be")


def test_mwu_update_traced_eta_is_not_checked():
  """Documented: a traced η cannot be checked; a NaN one gives NaN log-weights (the
  trainer's guard then skips the update)."""
  out = jax.jit(mwu.update)(mwu.init(3), jnp.ones(3), jnp.float32(np.nan))
  assert np.all(np.isnan(np.asarray(out)))
  out = jax.jit(mwu.update)(mwu.init(3), jnp.ones(3), jnp.float32(0.1))
  np.testing.assert_allclose(np.exp(np.asarray(out)).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("label", [3, 4, 100])
def test_labels_at_or_above_num_classes(label):
  """Documented (README "Failure modes"): a label >= C gives a NaN cross-entropy (so the
  trainer skips that update and never selects the point); the per-class sums refuse it
  when the labels are concrete and count it in no class when traced (inside jit)."""
  logits = jnp.zeros((2, 3))
  y = jnp.asarray([0, label])
  loss = np.asarray(class_weighted_losses.cross_entropy(logits, y))
  assert np.isfinite(loss[0]) and np.isnan(loss[1])
  with pytest.raises(ValueError, match=rf"labels must be in \[0, 3\), got {label} at index 1"):
    metrics.class_sums(jnp.ones(2), y, 3)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
    metrics.correct_sums(logits, y)
  counts = jax.jit(lambda yy: metrics.class_sums(jnp.ones(2), yy, 3).counts)(y)
  assert np.asarray(counts).tolist() == [1.0, 0.0, 0.0]
  counts = jax.jit(lambda yy: metrics.correct_sums(logits, yy).counts)(y)
  assert np.asarray(counts).tolist() == [1.0, 0.0, 0.0]
  scores = selection_scores.reducr_scores(jnp.asarray(loss), jnp.zeros((2, 3)), jnp.ones(3) / 3)
  assert np.asarray(selection.top_k(scores, 1)).tolist() == [0]      # never the NaN point


def _mlp_apply(p, x):
  return x @ p


def _meta_loss(p, batch):
  return class_weighted_losses.cross_entropy(batch["x"] @ p, batch["y"])


def _int(n):
  return jnp.zeros((n,), jnp.int32)


@pytest.mark.parametrize("call, message", [
    (lambda: selection_scores.reducr_scores(jnp.ones(4), jnp.zeros((4, 2)), jnp.asarray([-1.0, 2.0])),
     "class_weights must be >= 0 everywhere, got -1.0 at index 0"),
    (lambda: selection_scores.weighted_scores(jnp.ones((4, 2)), jnp.asarray([0.5, np.nan])),
     "class_weights must be >= 0 everywhere, got nan at index 1"),
    (lambda: mwu.ema_init(0), "num_classes must be a positive int, got 0"),
    (lambda: mwu.ema_init(-1), "num_classes must be a positive int, got -1"),
    (lambda: mwu.init(0), "num_classes must be a positive int, got 0"),
    (lambda: metrics.class_sums(jnp.ones(3), jnp.asarray([0, 1, 2]), 0),
     "num_classes must be a positive int, got 0"),
    (lambda: metrics.class_sums(jnp.ones(3), jnp.asarray([0.0, 1.0, 2.0]), 3),
     "labels must be integer class labels, got dtype float32"),
    (lambda: metrics.summary(metrics.ClassSums(jnp.zeros(3), jnp.zeros(3))),
     "stats must count at least one example"),
    (lambda: metrics.summary(metrics.ClassSums(jnp.asarray([5.0, 1.0]), jnp.asarray([1.0, 1.0]))),
     "stats.sums must be correct-prediction counts in [0, stats.counts], got class 0: 5 correct of 1"),
    (lambda: selection.gumbel_top_k(7, jnp.zeros(5), 2),
     "rng must be a PRNG key (jax.random.key(seed)), got int 7"),
    (lambda: selection.gumbel_top_k(jnp.zeros(3), jnp.zeros(5), 2),
     "rng must be a PRNG key (jax.random.key(seed)), got an array of dtype float32"),
    (lambda: stacked_experts.expert_losses(_mlp_apply, jnp.zeros((3, 4, 2)), jnp.ones((5, 4)), _int(6)),
     "y must have shape [n=5], got (6,)"),
    (lambda: stacked_experts.expert_losses(_mlp_apply, jnp.zeros((3, 4, 2)), jnp.ones((5, 4)), jnp.zeros(5)),
     "y must be integer class labels, got dtype float32"),
    (lambda: stacked_experts.expert_losses(_mlp_apply, jnp.zeros((3, 4, 2)), jnp.ones((5, 7)), _int(5)),
     "apply_fn(stacked_params[c], x) fails for x of shape (5, 7)"),
    (lambda: importlib.import_module("reducr_jax.core.meta_reweight").example_weights(
        _meta_loss, jnp.zeros((4, 2)), {"x": jnp.ones((3, 4)), "y": _int(3)},
        {"x": jnp.ones((3, 5)), "y": _int(3)}, 0.1),
     "val_batch['x'] must have train_batch['x']'s per-example shape (4,), got (5,)"),
], ids=["reducr_scores_negative", "weighted_scores_nan", "ema_init_0", "ema_init_-1",
        "init_0", "class_sums_C0", "class_sums_float_labels", "summary_empty",
        "summary_sums_gt_counts", "gumbel_int_rng", "gumbel_float_rng",
        "expert_losses_mismatch", "expert_losses_float_labels", "expert_losses_features",
        "example_weights_features"])
def test_pure_function_bad_argument_is_one_line_value_error(call, message):
  with pytest.raises(ValueError) as e:
    call()
  assert message in one_line(e)


def test_nan_logits_are_never_correct():
  logits = jnp.asarray([[np.nan, 0.0, 0.0], [0.0, np.nan, 5.0], [3.0, 0.0, 0.0]])
  stats = metrics.correct_sums(logits, jnp.asarray([0, 2, 0]))
  assert np.asarray(stats.sums).tolist() == [1.0, 0.0, 0.0]      # only the finite row
  assert np.asarray(stats.counts).tolist() == [2.0, 0.0, 1.0]


def test_traced_class_weights_are_not_checked():
  """Documented: negative weights known only inside jit cannot be checked at trace time."""
  out = jax.jit(selection_scores.weighted_scores)(jnp.ones((2, 2)), jnp.asarray([-1.0, 2.0]))
  assert np.asarray(out).tolist() == [1.0, 1.0]


# ------------------------------------------- dtype, label and static-argument checks


@pytest.mark.parametrize("call, message", [
    # float labels: a float one-hot index would count nothing (γ up-weighting dropped)
    (lambda: metrics.class_sums(jnp.ones(3), jnp.array([0.0, 1.0, 2.0]), 3),
     "labels must be integer class labels, got dtype float32"),
    (lambda: jax.jit(lambda y: metrics.class_sums(jnp.ones(3), y, 3))(jnp.array([0.0, 1, 2])),
     "labels must be integer class labels, got dtype float32"),
    # label −1 (an "ignore" label) when concrete
    (lambda: metrics.class_sums(jnp.ones(3), jnp.array([0, 1, -1]), 3),
     r"labels must be in \[0, 3\), got -1 at index 2"),
    (lambda: metrics.class_sums(jnp.array([True, False]), jnp.array([0, 1]), 2),
     "values must be a float or int array, got dtype bool"),
    # traced num_classes / clip: one line, not a raw tracer error
    (lambda: jax.jit(lambda c: metrics.class_sums(jnp.ones(2), jnp.array([0, 1]), c))(2),
     "num_classes must be a static Python int >= 1 .* got a traced value"),
    (lambda: jax.jit(lambda c: selection_scores.reducible_losses(jnp.ones(2), jnp.ones((2, 3)),
                                                          clip=c))(True),
     "clip must be a static Python bool .* got a traced value"),
    # int losses and bool weights where floats are meant
    (lambda: selection_scores.reducible_losses(jnp.array([1, 2]), jnp.ones((2, 3))),
     "model_loss must be a float array, got dtype int32"),
    (lambda: selection_scores.rho_loss_scores(jnp.ones(2), jnp.array([0, 1])),
     "irreducible_loss must be a float array, got dtype int32"),
    (lambda: selection_scores.weighted_scores(jnp.ones((2, 3)), jnp.array([True, False, True])),
     "class_weights must be a float array, got dtype bool"),
    (lambda: mwu.class_objective(jnp.ones((2, 3), jnp.int32), jnp.ones(3)),
     "excess_selected must be a float array, got dtype int32"),
])
def test_dtype_label_and_static_checks_are_one_line(call, message):
  with pytest.raises(ValueError, match=message) as e:
    call()
  assert "\n" not in str(e.value)


def test_masked_padding_may_carry_any_label():
  """A padding row (mask False) with label −1 is ignored, not refused: counts [1, 1]."""
  stats = metrics.class_sums(jnp.ones(3), jnp.array([0, -1, 1]), 2,
                             mask=jnp.array([True, False, True]))
  assert np.asarray(stats.counts).tolist() == [1.0, 1.0]


def test_group_dro_example_weights_refuse_label_minus_one():
  """class_counts[−1] would silently read class C−1's count."""
  from reducr_jax.core import group_dro  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got -1 at index 1"):
    group_dro.example_weights(jnp.array([0, -1]), mwu.init(3), jnp.array([1.0, 0, 1]))
  w = group_dro.example_weights(jnp.array([0, 2]), mwu.init(3), jnp.array([1.0, 0, 1]))
  np.testing.assert_allclose(w, [1 / 3, 1 / 3], rtol=1e-6)
