"""Runs that survive clusters: SIGTERM/SIGINT, damaged checkpoints and caches, a changed
config, a second writer, a diverged run and a full disk, each on a tiny default config."""

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.run import caches
from reducr_jax.run import checkpointing
from reducr_jax.config import configuration
from reducr_jax.run import divergence
from reducr_jax.run import preemption
from reducr_jax.train import trainer as train
from reducr_jax.config import workdir as workdir_lib
import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, "-m", "reducr_jax.main", "--config=configs/default.py"]
TINY_FLAGS = ["--config.dataset.name=digits", "--config.dataset.imbalance_fraction=0.05",
              "--config.model.hidden=(32,)", "--config.batch_size=80",
              "--config.experts.num_steps=30", "--config.experts.eval_every=30",
              "--config.eval_every=50", "--config.log_every=10", "--config.num_devices=1",
              "--config.num_steps=200", "--config.checkpoint_every=100"]


def tiny_config(**overrides):
  """test_train's tiny config, smaller still, on one device."""
  return test_train.tiny_config(**{
      "model.hidden": (16,), "num_steps": 20, "experts.num_steps": 20,
      "experts.eval_every": 20, "eval_every": 10, "checkpoint_every": 10,
      "eval_batch_size": 256, "num_devices": 1, "selection.eta": 3e-2, **overrides})


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_resumes_byte_identically(tmp_path):
  cache = [f"--config.experts.cache_dir={tmp_path / 'experts'}"]
  ref = tmp_path / "uninterrupted"
  subprocess.run(MAIN + TINY_FLAGS + cache + [f"--workdir={ref}"], check=True, cwd=REPO,
                 env=_env(), capture_output=True)
  work = tmp_path / "interrupted"
  proc = subprocess.Popen(MAIN + TINY_FLAGS + cache + [f"--workdir={work}"], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:   # wait for the training loop
    if (work / "metrics.jsonl").exists() and (work / "metrics.jsonl").read_text():
      break
    time.sleep(0.02)
  time.sleep(random.uniform(0.0, 0.3))
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped by SIGTERM after step ") and "run the same command" in last
  step = int(last.split("after step ")[1].split(";")[0])
  assert str(step) in os.listdir(work / "checkpoints")     # the stopped step was saved
  assert not (work / "results.json").exists()
  out = subprocess.run(MAIN + TINY_FLAGS + cache + [f"--workdir={work}"], check=True,
                       cwd=REPO, env=_env(), capture_output=True, text=True)
  assert f"resumed from step {step}" in out.stdout
  assert (work / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  assert (work / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
  assert not (work / workdir_lib.LOCK_NAME).exists()


def test_signal_handler_defers_inside_the_loop_and_stops_at_once_outside():
  with preemption.Handler() as h:
    h.defer()
    os.kill(os.getpid(), signal.SIGINT)            # no KeyboardInterrupt: only a flag
    assert h.requested(5) and h.signum == signal.SIGINT
    e = h.stop(5, "/w/checkpoints")
    assert e.exit_code == 130 and "after step 5" in str(e) and "\n" not in str(e)
  with preemption.Handler():
    with pytest.raises(preemption.Preempted) as e:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
    assert e.value.exit_code == 143
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # handlers put back


def test_a_signal_stops_a_long_device_computation_while_waiting():
  """Stage 1 waits for each step with preemption.wait: a SIGTERM during a long
  computation raises Preempted while the computation is still running (np.asarray would
  hold the main thread until it ended)."""
  @jax.jit
  def slow(x):
    return jax.lax.fori_loop(0, 40, lambda i, a: jnp.tanh(a @ a), x)
  x = jnp.full((700, 700), 1e-3)
  slow(x).block_until_ready()              # compiled; 27 GFLOP per call, ≈ 1 s on 2 cores
  with preemption.Handler():
    y = slow(x)
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(preemption.Preempted) as e:
      preemption.wait({"losses": y, "host": np.zeros(2)}, poll_seconds=0.01)
    assert e.value.exit_code == 143
    assert not y.is_ready()                        # stopped before the step ended
  y.block_until_ready()
  assert preemption.wait(y) is y


def _flip(path, n=16):
  b = bytearray(path.read_bytes())
  for i in range(n):
    b[len(b) // 2 + i] ^= 0xFF
  path.write_bytes(bytes(b))


def _biggest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs
           if f != checkpointing.MANIFEST]
  return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_damaged_checkpoint_and_cache_fall_back_and_rebuild(tmp_path, caplog):
  config = tiny_config()
  first = train.train_and_evaluate(config, str(tmp_path))
  reference = (tmp_path / "results.json").read_bytes()
  ckpts = tmp_path / "checkpoints"
  assert sorted(os.listdir(ckpts)) == ["10", "20"]
  import pathlib  # pylint: disable=g-import-not-at-top
  _flip(pathlib.Path(_biggest_file(ckpts / "20")))              # 16 flipped bytes
  cache = tmp_path / "experts" / os.listdir(tmp_path / "experts")[0]
  victim = pathlib.Path(_biggest_file(cache))
  victim.write_bytes(victim.read_bytes()[:100])                  # truncated cache file
  (ckpts / "7.orbax-checkpoint-tmp-123").mkdir()                 # a dead writer's dirs
  (tmp_path / "results.json.tmp-99999999").write_text("partial")
  with caplog.at_level(logging.WARNING):
    again = train.train_and_evaluate(config, str(tmp_path))
  messages = [r.getMessage() for r in caplog.records]
  assert any(f"checkpoint {ckpts / '20'} is damaged (content hash" in m for m in messages)
  assert any("is damaged" in m and "experts" in m for m in messages)
  assert (tmp_path / "results.json").read_bytes() == reference
  assert again["test"] == first["test"]
  assert sorted(os.listdir(ckpts)) == ["10", "20"]
  with checkpointing.Checkpointer(str(ckpts)) as ckpt:
    assert ckpt.verify(20) is None
  assert not (tmp_path / "results.json.tmp-99999999").exists()


@pytest.mark.parametrize("damage", ["no_manifest", "deleted_file", "truncated_file",
                                    "flipped_bytes"])
def test_newest_intact_checkpoint_is_restored(tmp_path, damage, caplog):
  state = {"a": np.arange(300.0)}
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, {"a": np.arange(300.0) + 1})
  victim = _biggest_file(tmp_path / "2")
  if damage == "no_manifest":               # killed between orbax's rename and the manifest
    os.remove(tmp_path / "2" / checkpointing.MANIFEST)
  elif damage == "deleted_file":
    os.remove(victim)
  elif damage == "truncated_file":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  else:
    import pathlib  # pylint: disable=g-import-not-at-top
    _flip(pathlib.Path(victim))
  with checkpointing.Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING):
    if damage != "no_manifest":
      with pytest.raises(checkpointing.CheckpointDamaged):
        ckpt.restore(state, 2)
    step, restored = ckpt.restore_newest_intact(state)
  messages = " ".join(r.getMessage() for r in caplog.records)
  if damage == "no_manifest":
    assert step == 2 and "restoring it unverified" in messages
  else:
    assert step == 1 and np.array_equal(restored["a"], np.arange(300.0))
    assert f"checkpoint {tmp_path / '2'} is damaged" in messages
    assert not (tmp_path / "2").exists()


@pytest.mark.slow
def test_diverged_run_stops_with_one_line_and_writes_no_nan(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate": 1e30, "max_consecutive_skipped": 3,
                          "selection.method": "uniform",
                          "num_steps": 30, "checkpoint_every": 1, "log_every": 1})
  with pytest.raises(divergence.Diverged) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert "3 consecutive updates skipped" in str(e.value) and "\n" not in str(e.value)
  assert e.value.exit_code == 1
  with checkpointing.Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    step = ckpt.latest_step()
  assert step is not None and step < 30
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  raw = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
  leaves = [np.asarray(x) for x in jax.tree.leaves(raw)]
  assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")
  log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any(r.get("train/num_skipped", 0) > 0 for r in log)


def test_skip_monitor_counts_consecutive_skips_one_step_late():
  m = divergence.SkipMonitor(3)
  for step, flag in enumerate([1, 1, 0, 1, 1], start=1):
    m.push(step, np.array([flag]))
  m.flush()
  assert m.consecutive == 2
  m.push(6, np.array([1]))
  with pytest.raises(divergence.Diverged, match="up to step 6"):
    m.flush()


@pytest.mark.slow
def test_full_disk_changed_config_second_writer_and_shrunk_num_steps(tmp_path, monkeypatch):
  """One workdir through several faults: a full disk at results.json (one line, no partial
  file, the next run succeeds), then a changed config, a shorter num_steps and a second
  writer refused, and finally an extended num_steps accepted."""
  config = tiny_config(**{"selection.method": "uniform", "num_steps": 10})
  path_cls = type(caches.temp_name(tmp_path / "x"))
  real_open = path_cls.open

  def full_open(self, mode="r", *args, **kwargs):
    f = real_open(self, mode, *args, **kwargs)
    if self.name.startswith("results.json.tmp-") and "w" in mode:
      f.write(b"{partial")
      f.close()
      raise OSError(errno.ENOSPC, "No space left on device")
    return f
  monkeypatch.setattr(path_cls, "open", full_open)
  with pytest.raises(caches.DiskFullError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert "disk full while writing" in str(e.value) and "\n" not in str(e.value)
  assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
  assert not (tmp_path / "results.json").exists()
  monkeypatch.undo()
  train.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "results.json").exists()

  with pytest.raises(configuration.ConfigError, match="selection.method .'uniform' -> 'reducr'"):
    train.train_and_evaluate(tiny_config(num_steps=10), str(tmp_path))
  with pytest.raises(configuration.ConfigError, match="can only be extended"):
    train.train_and_evaluate(configuration.with_overrides(config, {"num_steps": 5}),
                             str(tmp_path))
  with workdir_lib.Lock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"PID {os.getpid()}"):
      train.train_and_evaluate(config, str(tmp_path))
  longer = configuration.with_overrides(config, {"num_steps": 20, "eval_every": 5})
  assert train.train_and_evaluate(longer, str(tmp_path))["num_steps"] == 20


@pytest.mark.slow
def test_eta_auto_run_extended_from_30_to_60_steps_is_the_60_step_run(tmp_path):
  """num_steps is resumable and eta='auto' is the anytime schedule, so 30
  steps resumed to 60 give the 60-step run byte for byte: results.json (class weights,
  accuracies, the resolved schedule), metrics.jsonl and the final checkpoint's params and
  MWU state. (With the old fixed-horizon η = √(8 ln C/(T L²)) the first 30 steps of the
  two runs used different η.)"""
  cache = {"experts.cache_dir": str(tmp_path / "experts")}
  config = tiny_config(**{"selection.eta": "auto", "num_steps": 60, "log_every": 10,
                          "eval_every": 10, "checkpoint_every": 30, **cache})
  longer = train.train_and_evaluate(config, str(tmp_path / "sixty"))
  train.train_and_evaluate(configuration.with_overrides(config, {"num_steps": 30}),
                           str(tmp_path / "extended"))
  extended = train.train_and_evaluate(config, str(tmp_path / "extended"))
  for name in ("results.json", "metrics.jsonl"):
    assert (tmp_path / "extended" / name).read_bytes() == (tmp_path / "sixty" / name).read_bytes()
  assert extended == longer
  # k = round(0.1 · 80) = 8, C = 10: η_t = (1/8) √(8 / (t ln 10)); η_1 = 0.232995, η_60 = 0.0300796.
  assert longer["eta"] == {"schedule": "anytime", "eta_1": pytest.approx(0.232995, rel=1e-5),
                           "eta_T": pytest.approx(0.0300796, rel=1e-5), "num_updates": 60}
  w = np.asarray(longer["class_weights"])
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5 and w.max() > 0.11   # the weights moved
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  raw = [ocp.StandardCheckpointer().restore(tmp_path / run / "checkpoints" / "60" / "state")
         for run in ("sixty", "extended")]
  assert jax.tree.structure(raw[0]) == jax.tree.structure(raw[1])
  for a, b in zip(jax.tree.leaves(raw[0]), jax.tree.leaves(raw[1])):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert int(raw[0]["state"]["selector_state"]["anytime"]["num_updates"]) == 60


def test_full_disk_during_a_checkpoint_save_leaves_no_partial_step(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path)
  real_save = ckpt._manager.save  # pylint: disable=protected-access

  def full_save(step, *args, **kwargs):
    (tmp_path / f"{step}.orbax-checkpoint-tmp-1").mkdir()
    raise OSError(errno.ENOSPC, "No space left on device")
  ckpt._manager.save = full_save  # pylint: disable=protected-access
  with pytest.raises(caches.DiskFullError, match="disk full while saving checkpoint 3"):
    ckpt.save(3, {"a": np.zeros(2)})
  assert os.listdir(tmp_path) == []
  ckpt._manager.save = real_save  # pylint: disable=protected-access
  ckpt.save(3, {"a": np.zeros(2)})
  assert ckpt.verify(3) is None
  ckpt.close()


def test_processes_agree_on_the_stop_step(monkeypatch):
  """Multi-process: the flag is all-gathered every `sync_every` steps; a process that got
  no signal stops at the same step as the one that did."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  gathered = []
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: gathered.append(int(x)) or np.array([int(x), signal.SIGTERM]))
  with preemption.Handler(sync_every=10) as h:
    h.defer()
    assert not h.requested(7) and gathered == []        # between sync steps: no collective
    assert h.requested(10) and gathered == [0]          # this process had no signal
    assert h.stop(10, "/w").exit_code == 143


def test_a_refused_lock_stops_every_process(tmp_path, monkeypatch):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)          # not the lock holder
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.int32(0))
  with pytest.raises(workdir_lib.WorkdirBusy, match="see process 0"):
    with workdir_lib.lock(tmp_path):
      pass
  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"optimizer.learning_rate": 1e30, "selection.method": "uniform"},
    {"experts.update_lr_factor": 1e30, "experts.update_on_selected": True,
     "experts.losses": "online"},
], ids=["learning_rate", "update_lr_factor"])
def test_a_short_diverged_run_is_not_a_success(tmp_path, overrides, capfd, caplog):
  """20 steps cannot reach max_consecutive_skipped (100): the skipped share decides. The
  first huge step (|θ| ≈ 1e30, finite) is skipped too (divergence.bounded), so no
  checkpoint holds it, and TensorBoard gets no non-finite scalar (one warning instead of
  tensorboardX's line per value)."""
  config = tiny_config(**overrides, **{"log_every": 1, "eval_every": 20,
                                       "checkpoint_every": 20})
  with caplog.at_level(logging.WARNING), pytest.raises(divergence.Diverged) as e:
    train.train_and_evaluate(config, str(tmp_path))
  text = str(e.value)
  assert "20 of 20 updates skipped (100% > config.max_skipped_share = 0.5" in text
  assert "\n" not in text and e.value.exit_code == 1
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["status"] == "diverged" and results["skipped_share"] == 1.0
  assert results["num_skipped"] == 20
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  raw = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "20" / "state")
  for x in jax.tree.leaves(raw):
    x = np.asarray(x)
    if x.dtype.kind == "f":
      assert np.all(np.abs(x) < 1e6)          # the initial parameters, not 1e30
  out, err = capfd.readouterr()
  logged = " ".join(r.getMessage() for r in caplog.records)
  assert "NaN or Inf" not in out + err + logged


def test_non_finite_metrics_stay_out_of_tensorboard(tmp_path, capfd, caplog):
  from reducr_jax.run import metric_writers  # pylint: disable=g-import-not-at-top
  pytest.importorskip("tensorboardX")
  writer = metric_writers.MetricWriter(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    for step in range(1, 23):
      writer.write(step, {"train/loss": np.nan, "train/w": np.array([1.0, np.inf]),
                          "train/ok": 2.0})
  writer.close()
  out, err = capfd.readouterr()
  assert "NaN or Inf" not in out + err
  logged = [r.getMessage() for r in caplog.records]
  assert sum("not written to TensorBoard" in m for m in logged) == 1, logged
  assert not any("NaN or Inf" in m for m in logged)
  record = metric_writers.read_metrics(str(tmp_path))[0]
  assert record == {"step": 1, "train/loss": None, "train/w": [1.0, None], "train/ok": 2.0}


def test_skipped_share_threshold_and_bounded_rule():
  assert divergence.run_status(10, 20, 0.5) == {"status": "ok", "skipped_share": 0.5}
  status = divergence.run_status(11, 20, 0.5)
  assert status == {"status": "diverged", "skipped_share": 0.55}
  with pytest.raises(divergence.Diverged, match="11 of 20 updates skipped"):
    divergence.check_share(status, 11, 20, 0.5)
  divergence.check_share(divergence.run_status(20, 20, 1.0), 20, 20, 1.0)   # 1.0: never
  # Σθ² must be finite in float32: |θ| = 1e19 passes (1e38 < 3.4e38), 2e19 does not.
  assert bool(divergence.bounded({"w": jnp.full((1,), 1e19)}))
  assert not bool(divergence.bounded({"w": jnp.full((1,), 2e19), "b": jnp.zeros(3)}))
  assert not bool(divergence.bounded({"w": jnp.array([0.0, jnp.nan])}))
  assert bool(divergence.bounded({}))


def test_max_skipped_share_is_validated():
  with pytest.raises(configuration.ConfigError, match=r"config.max_skipped_share must be in \[0, 1\]"):
    configuration.validate_config(tiny_config(max_skipped_share=1.5), 1)


def test_full_disk_save_hides_orbax_background_tracebacks(tmp_path, caplog, monkeypatch):
  """A full disk during a save: orbax's background threads log an ERROR with a traceback
  per failed write, and tensorstore's pending writes report "Event loop is closed" as
  unraisable, dozens of tracebacks around the one line; both are dropped (nothing else)."""
  ckpt = checkpointing.Checkpointer(tmp_path)
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "future.py")

  def full_save(step, *args, **kwargs):
    for message in ("_SignalingThread.run() raised: RESOURCE_EXHAUSTED: Failed to write: "
                    "No space left on device [os_error_code='28']", "an unrelated orbax error"):
      logging.getLogger("absl").handle(logging.LogRecord(
          "absl", logging.ERROR, orbax_file, 387, message, None, None))
    for value in (RuntimeError("Event loop is closed"), RuntimeError("another")):
      sys.unraisablehook(type("U", (), {"exc_type": RuntimeError, "exc_value": value,
                                        "exc_traceback": None, "err_msg": None,
                                        "object": None})())
    raise OSError(errno.ENOSPC, "No space left on device")
  ckpt._manager.save = full_save  # pylint: disable=protected-access
  reported = []                                      # what would print a traceback
  monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(str(u.exc_value)))
  with caplog.at_level(logging.WARNING), pytest.raises(caches.DiskFullError):
    ckpt.save(3, {"a": np.zeros(2)})
  messages = [r.getMessage() for r in caplog.records]
  assert "an unrelated orbax error" in messages
  assert not any("No space left" in m for m in messages)
  assert reported == ["another"]
  ckpt.close()
