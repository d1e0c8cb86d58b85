"""Tests for reducr_jax.run.checkpointing: round trips, step management and crash safety."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from reducr_jax.run.checkpointing import Checkpointer, stored_config

_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's AtomicRenameTemporaryPath naming.


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


class EMA(NamedTuple):
  mean: jax.Array
  count: jax.Array


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array
  log_w: jax.Array
  rng: jax.Array
  ema: EMA
  extra: dict


@jax.jit
def _device_state(seed: jax.Array) -> tuple:
  """The jax part of the state (jitted: one compile instead of many eager ops)."""
  key = jax.random.PRNGKey(seed)
  params = _MLP().init(key, jnp.ones((1, 5)))
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  # One real update so that the Adam moments and count are non-trivial.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5) + seed, params)
  _, opt_state = tx.update(grads, opt_state, params)
  log_w = jax.nn.log_softmax(jax.random.normal(jax.random.fold_in(key, 1), (10,)))
  ema = EMA(mean=jnp.linspace(0, 1, 10, dtype=jnp.float32) + seed,
            count=jnp.arange(10, dtype=jnp.int32))
  bf16 = (jnp.arange(7, dtype=jnp.float32) / 3 + seed).astype(jnp.bfloat16)
  return params, opt_state, log_w, jax.random.split(key)[1], ema, bf16


def _make_state(seed: int = 0) -> TrainState:
  params, opt_state, log_w, rng, ema, bf16 = _device_state(seed)
  return TrainState(
      params=params,
      opt_state=opt_state,
      step=jnp.int32(123 + seed),
      log_w=log_w,
      rng=rng,
      ema=ema,
      extra={
          "bf16": bf16,
          "np_u32": np.array([1, 2**32 - 1], np.uint32),
          "np_bf16": (np.arange(3, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16),
          "np_f64": np.array([np.pi, -0.0, 1e-300]) + seed,
          "np_scalar": np.float32(0.1 + seed),
          "py_int": 7 + seed,
          "py_float": 0.25,
          "empty": (),
      },
  )


def _zeros_like_state(state: TrainState) -> TrainState:
  """A template with the same types/shapes/dtypes but different values."""
  def zero(x):
    if isinstance(x, np.ndarray):
      return np.zeros_like(x)
    if isinstance(x, np.generic):
      return x.dtype.type(0)
    if isinstance(x, (int, float)):
      return type(x)(0)
    return jnp.zeros_like(x)
  return jax.tree.map(zero, state)


def _assert_identical(got: Any, want: Any) -> None:
  """Same treedef, leaf types, dtypes, shapes, and bit-identical values."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    where = jax.tree_util.keystr(path)
    if isinstance(w, jax.Array):
      assert isinstance(g, jax.Array), where
    elif isinstance(w, np.ndarray):
      assert isinstance(g, np.ndarray) and not isinstance(g, jax.Array), where
    else:
      assert type(g) is type(w), (where, type(g), type(w))
    g_np, w_np = np.asarray(g), np.asarray(w)
    assert g_np.dtype == w_np.dtype and g_np.shape == w_np.shape, where
    assert g_np.tobytes() == w_np.tobytes(), where


def test_round_trip_bit_identical(tmp_path):
  state = _make_state()
  config = {"epoch": 3, "lr": 1e-3, "names": ["a", "b"], "np_int": np.int64(5),
            "nested": {"x": None}}
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    ckpt.save(10, state, config)
    assert ckpt.latest_step() == 10
    restored = ckpt.restore(_zeros_like_state(state))
  _assert_identical(restored, state)
  assert isinstance(restored, TrainState) and isinstance(restored.ema, EMA)
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  assert isinstance(restored.opt_state[1], optax.EmptyState)
  assert stored_config(tmp_path / "ckpt" / "10") == {
      "epoch": 3, "lr": 1e-3, "names": ["a", "b"], "np_int": 5, "nested": {"x": None}}
  # The restored state is usable: one more optimizer step works on it.
  tx = optax.adamw(1e-3)
  grads = jax.tree.map(jnp.ones_like, restored.params)
  updates, _ = tx.update(grads, restored.opt_state, restored.params)
  expected, _ = tx.update(grads, state.opt_state, state.params)
  _assert_identical(updates, expected)


def test_typed_key_and_abstract_template(tmp_path):
  state = {"key": jax.random.key(3), "w": jnp.arange(4.0)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(0, state)
    restored = ckpt.restore({"key": jax.random.key(0),
                             "w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert stored_config(tmp_path / "0") is None
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(state["key"]))
  assert isinstance(restored["w"], jax.Array)
  np.testing.assert_array_equal(restored["w"], state["w"])


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several (fake CPU) devices")
def test_sharded_template(tmp_path):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  n = jax.device_count()
  state = {"w": jax.device_put(jnp.arange(4.0 * n).reshape(n, 4), sharded),
           "b": jax.device_put(jnp.arange(3, dtype=jnp.int32), replicated)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(0, state)
    # Saved sharded, restored unsharded (default device) and vice versa.
    plain = ckpt.restore(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state))
    assert plain["w"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _assert_identical(plain, state)
    ckpt.save(1, plain)
    restored = ckpt.restore(jax.tree.map(jnp.zeros_like, state), step=1)
  assert restored["w"].sharding == sharded and restored["b"].sharding == replicated
  _assert_identical(restored, state)


def test_fresh_instance_and_specific_step(tmp_path):
  path = tmp_path / "run"
  states = {s: _make_state(seed=s) for s in (1, 2, 3)}
  with Checkpointer(path, max_to_keep=3) as ckpt:
    for s, st in states.items():
      ckpt.save(s, st, {"step": s})
  with Checkpointer(path, max_to_keep=3) as ckpt:
    assert ckpt.all_steps() == [1, 2, 3]
    assert ckpt.latest_step() == 3
    template = _zeros_like_state(states[1])
    for s in (2, 1, 3):
      _assert_identical(ckpt.restore(template, step=s), states[s])
      assert stored_config(path / str(s)) == {"step": s}
    _assert_identical(ckpt.restore(template), states[3])
    with pytest.raises(FileNotFoundError):
      ckpt.restore(template, step=7)
    # Re-saving an existing step keeps the existing checkpoint.
    ckpt.save(3, states[1], {"step": -1})
    _assert_identical(ckpt.restore(template, step=3), states[3])
    assert stored_config(path / "3") == {"step": 3}


def test_empty_dir_and_missing_checkpoint(tmp_path):
  with Checkpointer(tmp_path / "new") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError):
      ckpt.restore({"a": np.zeros(2)})
  assert (tmp_path / "new").is_dir()


def test_max_to_keep(tmp_path):
  state = {"x": jnp.arange(3), "log_w": jnp.zeros(10)}
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for s in range(0, 50, 10):
      ckpt.save(s, state)
    assert ckpt.all_steps() == [30, 40]
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["30", "40"]
  with pytest.raises(ValueError):
    Checkpointer(tmp_path, max_to_keep=0)


def test_relative_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state = {"a": np.arange(5, dtype=np.int32)}
  with Checkpointer("rel/ckpts") as ckpt:
    assert os.path.isabs(ckpt.directory)
    assert ckpt.directory == str(tmp_path / "rel" / "ckpts")
    ckpt.save(4, state, {"k": "v"})
  assert (tmp_path / "rel" / "ckpts" / "4").is_dir()
  with Checkpointer("rel/ckpts") as ckpt:
    restored = ckpt.restore({"a": np.zeros(5, np.int32)})
  _assert_identical(restored, state)
  assert stored_config(tmp_path / "rel" / "ckpts" / "4") == {"k": "v"}


def test_leftover_tmp_directory_is_ignored_and_cleaned(tmp_path):
  state = {"w": jnp.arange(6.0)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  # What an interrupted save of step 2 leaves behind, named exactly as orbax names it,
  # including the commit marker that is written just before the final rename.
  leftover = tmp_path / f"2{_TMP_SUFFIX}"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "garbage").write_bytes(b"\0" * 10)
  (leftover / "commit_success.txt").write_text("x")
  with Checkpointer(tmp_path) as ckpt:  # Ignores it; orbax deletes it.
    assert ckpt.latest_step() == 1
    restored = ckpt.restore({"w": jnp.zeros(6)})
    _assert_identical(restored, state)
    ckpt.save(2, {"w": jnp.ones(6)})
    assert ckpt.latest_step() == 2
  assert not leftover.exists()


_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from reducr_jax.run.checkpointing import Checkpointer

    directory, mode = sys.argv[1], sys.argv[2]
    ckpt = Checkpointer(directory, max_to_keep=5)
    ckpt.save(1, {"w": np.arange(10, dtype=np.float32)}, {"step": 1})
    if mode == "hang_before_rename":
      # Block the final rename of step 2 into place: everything, including
      # commit_success.txt, is written, only the atomic rename is missing.
      from orbax.checkpoint._src.path import async_path
      real_rename = async_path.rename
      async def rename(src, dst):
        if os.path.basename(str(dst)) == "2":
          print("HANG", flush=True)
          time.sleep(3600)
        return await real_rename(src, dst)
      async_path.rename = rename
    print("SAVED1", flush=True)
    big = np.random.default_rng(0).standard_normal((25, 1024, 1024), dtype=np.float32)
    ckpt.save(2, {"w": big}, {"step": 2})  # ~100 MB.
    ckpt.wait()
    print("SAVED2", flush=True)
    time.sleep(3600)
""")


def _dir_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:  # Renamed or replaced while we walk.
        pass
  return total


def _run_and_kill(directory: str, mode: str) -> bool:
  """Runs the child, SIGKILLs it mid-save of step 2; True if the kill hit mid-write."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.Popen([sys.executable, "-c", _CHILD, directory, mode],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
  tmp_dir = os.path.join(directory, f"2{_TMP_SUFFIX}")
  try:
    assert proc.stdout.readline().strip() == "SAVED1", proc.stderr.read()
    if mode == "hang_before_rename":
      assert proc.stdout.readline().strip() == "HANG", proc.stderr.read()
    else:  # Kill once step 2's temporary directory holds some, not all, array data.
      deadline = time.monotonic() + 60
      while _dir_bytes(tmp_dir) < 2**20 and proc.poll() is None:
        if os.path.isdir(os.path.join(directory, "2")):
          break  # The save won the race; the test then checks the complete step 2.
        assert time.monotonic() < deadline, "step-2 data never appeared"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stdout.close()
    proc.stderr.close()
  assert proc.returncode == -signal.SIGKILL
  return os.path.exists(tmp_dir)


@pytest.mark.parametrize("mode", ["hang_before_rename", "kill_while_writing"])
def test_interrupted_save_is_never_latest(tmp_path, mode):
  directory = str(tmp_path / "ckpt")
  interrupted = _run_and_kill(directory, mode)
  if mode == "hang_before_rename":  # Worst case: complete, commit marker included.
    assert interrupted
    assert os.path.exists(os.path.join(directory, f"2{_TMP_SUFFIX}", "commit_success.txt"))
  with Checkpointer(directory) as ckpt:
    if interrupted:
      assert ckpt.latest_step() == 1
      assert ckpt.all_steps() == [1]
    else:  # Only possible if the whole save won the race against the kill.
      assert mode == "kill_while_writing" and ckpt.latest_step() == 2
    restored = ckpt.restore({"w": np.zeros(10, np.float32)}, step=1)
    _assert_identical(restored, {"w": np.arange(10, dtype=np.float32)})
    assert stored_config(os.path.join(directory, "1")) == {"step": 1}
    if interrupted:  # Step 2 can be saved again; the leftover is gone afterwards.
      ckpt.save(2, {"w": np.ones(10, np.float32)}, {"step": 2})
      assert ckpt.latest_step() == 2
    assert not os.path.exists(os.path.join(directory, f"2{_TMP_SUFFIX}"))


def _hold_rename_of(step: int, monkeypatch):
  """Blocks orbax's final rename of ``step`` until the returned event is set."""
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  release, real_rename = threading.Event(), async_path.rename

  async def rename(src, dst):
    if os.path.basename(str(dst)) == str(step):
      release.wait(60)
    return await real_rename(src, dst)
  monkeypatch.setattr(async_path, "rename", rename)
  return release


def test_save_is_asynchronous_and_wait_finishes_it(tmp_path, monkeypatch):
  """save() returns while orbax still writes (here: its rename is held); wait() returns
  once the step is in place with its manifest; then old verified steps rotate away."""
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(1, {"w": np.arange(4.0)})
    release = _hold_rename_of(2, monkeypatch)
    ckpt.save(2, {"w": np.arange(4.0) + 1})            # returns: the rename is held
    assert not (tmp_path / "2").exists() and (tmp_path / f"2{_TMP_SUFFIX}").is_dir()
    assert ckpt._finisher.is_alive()                   # pylint: disable=protected-access
    release.set()
    ckpt.wait()
    assert ckpt.verify(2) is None and ckpt.all_steps() == [2]
    _assert_identical(ckpt.restore({"w": np.zeros(4)}), {"w": np.arange(4.0) + 1})


def test_a_stop_during_an_in_flight_save_waits_for_its_manifest(tmp_path, monkeypatch):
  """Second SIGTERM (stop at once) while a save is still being written in the background:
  the stop is raised only once the step is renamed and has its manifest."""
  import threading  # pylint: disable=g-import-not-at-top
  from reducr_jax.run import preemption  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(tmp_path)
  release = _hold_rename_of(4, monkeypatch)
  with preemption.Handler() as h:
    h.defer()
    os.kill(os.getpid(), signal.SIGTERM)                # first: stop after this step
    assert h.requested(4)
    with h.critical():
      ckpt.save(4, {"a": np.arange(300.0)})             # in flight: its rename is held
    assert not (tmp_path / "4").exists()
    threading.Timer(0.2, release.set).start()
    with pytest.raises(preemption.Preempted) as e:
      os.kill(os.getpid(), signal.SIGTERM)              # second: stop at once
      time.sleep(30)
  assert e.value.exit_code == 143 and not e.value.collective
  assert release.is_set() and (tmp_path / "4").is_dir()
  assert ckpt.verify(4) is None                         # manifest written before the stop
  ckpt.close()


def test_a_step_rotated_away_while_another_process_lists_is_skipped(tmp_path, monkeypatch):
  """Several processes: process 0's finisher deletes an old step while another process
  re-reads the steps. Seen in 1 of 10 two-process runs: orbax listed step 10, the
  deletion took its metadata, orbax's fallback ``stat`` of the step raised
  ``FileNotFoundError``, the reader died and process 0 hung in its next collective.
  The reader lists again instead (here orbax's failure is replayed once)."""
  with Checkpointer(tmp_path, max_to_keep=None) as writer:
    for s in (10, 20):
      writer.save(s, {"w": np.arange(3.0)})
  reader = Checkpointer(tmp_path, max_to_keep=None)
  manager = reader._manager                          # pylint: disable=protected-access
  real_reload, calls = manager.reload, []

  def reload_during_rotation():
    calls.append(1)
    if len(calls) == 1:                              # process 0 rotates step 10 away now
      shutil.rmtree(tmp_path / "10")
      raise FileNotFoundError(f"[Errno 2] No such file or directory: '{tmp_path / '10'}'")
    real_reload()

  monkeypatch.setattr(manager, "reload", reload_during_rotation)
  reader._reload()                                   # pylint: disable=protected-access
  assert len(calls) == 2 and reader.all_steps() == [20]
  reader.close()
