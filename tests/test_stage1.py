"""Stage 1 (reference models): strategies, data parallelism and the sharded loss table."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import fakes
from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.train import device_memory
from reducr_jax.train import references
from reducr_jax.train import stage1_memory
from reducr_jax.train import stage1_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _splits(n=48, classes=3, shape=(8, 8, 3), seed=0):
  """Tiny random image splits (uint8 [n, 8, 8, 3]) with every class in each split."""
  rng = np.random.default_rng(seed)

  def split(m):
    y = (np.arange(m) % classes).astype(np.int32)
    x = rng.integers(0, 256, (m,) + shape, dtype=np.uint8)
    return data.Split(x, y, y, np.arange(m))
  return data.Splits(split(n), split(n), split(24), split(24), classes,
                     [str(c) for c in range(classes)])


def _config(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs", "cifar10.py"))
  return configuration.with_overrides(config, {
      "model.width": 4, "model.stage_sizes": (1,), "experts.num_steps": 3,
      "experts.batch_size": 16, "experts.eval_every": 2, "eval_batch_size": 16,
      "dataset.augment": "crop_flip", **overrides})


def _train(tmp_path, name, **overrides):
  refs = references.get_reference_models(_config(**overrides), _splits(),
                                            str(tmp_path / name))
  return jax.tree.map(np.asarray, refs.params)


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def test_data_parallel_equals_one_device(tmp_path):
  # A batch-norm ResNet with crop+flip augmentation on 8 fake devices, 2 of the 3 experts
  # per vmap, against `map` on one device: same trained params and batch statistics.
  ref = _train(tmp_path, "one", **{"experts.strategy": "map", "num_devices": 1})
  _assert_close(_train(tmp_path, "eight", **{"experts.strategy": "vmap",
                                             "experts.chunk": 2}), ref)


def test_auto_strategy_fits_the_budget():
  picked = []
  def compile_fn(strategy, chunk, micro):
    picked.append((strategy, chunk, micro))
    gib = ({0: 14, 7: 7, 2: 2}[chunk] if strategy == "vmap" else 1) / micro
    return type("C", (), {"memory_analysis": lambda self: type("M", (), dict(
        argument_size_in_bytes=0, output_size_in_bytes=0, alias_size_in_bytes=0,
        generated_code_size_in_bytes=0, temp_size_in_bytes=int(gib * 2**30)))()})()
  cands = stage1_memory.strategy_candidates(14, "auto", 0, 8, backend="gpu")
  assert cands == [("vmap", 0, 1), ("vmap", 7, 1), ("vmap", 2, 1), ("map", 0, 1),
                   ("map", 0, 2), ("map", 0, 4), ("map", 0, 8)]
  # 7 experts: 7 GB + one model's 1 GB (the target step) = 8 GB ≤ 8.5 GB.
  cand, _, peak = stage1_memory.pick_strategy(compile_fn, 14, cands, 8.5 * 2**30)
  assert (cand, peak) == (("vmap", 7, 1), 7 * 2**30)
  assert picked == [("vmap", 0, 1), ("vmap", 7, 1)]
  # Not even one expert fits 1.5 GB: its gradient over 2 slices (0.5 + 0.5 GB) does.
  cand, _, _ = stage1_memory.pick_strategy(compile_fn, 14, cands, 1.5 * 2**30)
  assert cand == ("map", 0, 2)
  # Microbatch counts that cannot fit even at 1/m of the measured step are not compiled.
  picked.clear()
  cand, _, _ = stage1_memory.pick_strategy(
      compile_fn, 14, stage1_memory.strategy_candidates(14, "auto", 0, 8, backend="cpu"),
      0.3 * 2**30)
  assert cand == ("map", 0, 8) and picked == [("map", 0, 1), ("map", 0, 8)]
  assert stage1_memory.strategy_candidates(14, "auto", 0, 3, backend="cpu") == [("map", 0, 1)]
  assert stage1_memory.strategy_candidates(14, "vmap", 5, 8) == [("vmap", 5, 1)]
  # Chunk widths divide C (in-place chunk updates): 100 experts → 50, 25, 10, 5, 2.
  assert [c for s, c, m in stage1_memory.strategy_candidates(100, "auto", 0, 1, "gpu")
          if s == "vmap"] == [0, 50, 25, 10, 5, 2]


def test_sliced_validation_equals_whole_batch_losses(caplog):
  # A budget nothing fits: the last candidate, `map` with the batch in 16 slices of one
  # row; validation then runs in slices too. Each expert's checkpoint loss must equal its
  # eq.-8 loss on the whole selection split computed in one batch.
  config = _config(**{"experts.strategy": "auto", "experts.max_memory_gb": 1e-6,
                      "num_devices": 1})
  splits = _splits()
  fns, loss_fn, num, gamma = references.reference_model_fns(config, splits, "experts")
  with caplog.at_level("WARNING"):
    best, best_val = stage1_trainer.train_reference_models(config, splits, "experts", fns,
                                                           num, gamma)
  assert "no expert strategy fits" in caplog.text and "('map', 0, 16)" in caplog.text
  split = stage1_trainer.selection_split(config, splits)
  table = np.asarray(loss_fn(best, split.x, split.y))                     # [n, C]
  w = 1.0 + gamma * (split.y[:, None] == np.arange(num)[None, :])
  expected = stage1_trainer.checkpoint_criterion(
      (w * table).sum(0), w.sum(0), len(split.y), config.experts.loss_normalisation)
  np.testing.assert_allclose(best_val, expected, rtol=1e-4, atol=1e-6)


def _table_program(compiled_at, fixed_temp=0):
  def compile_at(b):       # 0.2 GB of parameters + 10 MB per row of activations
    compiled_at.append(b)
    return type("C", (), {"memory_analysis": lambda self: type("M", (), dict(
        argument_size_in_bytes=int(0.2e9), output_size_in_bytes=0, alias_size_in_bytes=0,
        generated_code_size_in_bytes=0, temp_size_in_bytes=fixed_temp + b * 10**7))()})()
  return compile_at


def test_fitting_batch_halves_until_the_forward_fits():
  compiled_at = []
  compile_at = _table_program(compiled_at)
  b, compiled = stage1_memory.fitting_batch(compile_at, 500, 4, 1.0e9)
  # 500 → 248 → 124 → 60: 0.2 + 0.6 GB ≤ 1.0 GB (multiples of the 4 devices). 248 and
  # 124 are not compiled: even with their activations scaled from 500's they need
  # 0.2 + 2.48 and 0.2 + 1.24 GB.
  assert b == 60 and compiled_at == [500, 60]
  assert compiled.memory_analysis().temp_size_in_bytes == 60 * 10**7
  # Nothing fits: the smallest multiple of the devices; everything fits: the batch.
  assert stage1_memory.fitting_batch(compile_at, 16, 4, 1.0)[0] == 4
  assert stage1_memory.fitting_batch(compile_at, 500, 4, 1e12)[0] == 500
  # With a workspace limit (CPU): the activations also stay under it, so 1e12 of budget
  # still gives 1.3 GB / 10 MB → 124 rows (500 → 248 → 124); the parameters (arguments)
  # do not count; below the smallest batch it is the smallest, not an error.
  compiled_at.clear()
  assert stage1_memory.fitting_batch(compile_at, 500, 4, 1e12, strict=True,
                                     workspace_bytes=1.3e9)[0] == 124
  assert compiled_at == [500, 124]
  compiled_at.clear()
  assert stage1_memory.fitting_batch(compile_at, 16, 4, 1e12, strict=True,
                                     workspace_bytes=1.0)[0] == 4
  assert compiled_at == [16, 4]


def test_fitting_batch_skips_only_what_cannot_fit():
  # A fixed 0.3 GB of workspace: scaled from 500 rows, 60 looks like it fits (0.2 + 0.64
  # GB) but needs 1.1 GB; it is compiled, found too big, and the next prediction (28
  # rows, 0.78 GB) is right — the batch halving one by one picks, with 3 compiles, not 5.
  compiled_at = []
  compile_at = _table_program(compiled_at, fixed_temp=int(0.3e9))
  assert stage1_memory.fitting_batch(compile_at, 500, 4, 1.0e9)[0] == 28
  assert compiled_at == [500, 60, 28]
  halving = [b for b in (500, 248, 124, 60, 28)
             if 0.2e9 + 0.3e9 + b * 1e7 <= 1.0e9]
  assert halving[0] == 28


def test_forward_workspace_limits_cpu_only():
  assert stage1_memory.forward_workspace_bytes(jax.devices("cpu")[0]) == \
      stage1_memory.CPU_FORWARD_WORKSPACE_BYTES
  assert stage1_memory.forward_workspace_bytes(type("D", (), {"platform": "tpu"})()) is None


def test_loss_table_takes_the_params_as_arguments(monkeypatch):
  # Closed over, the experts' params were constants of the table's executable (a second
  # copy, in its temporaries, so the workspace limit would count them); as an argument
  # the compiled program's argument bytes hold them.
  config = _config(**{"experts.strategy": "map", "experts.num_steps": 1,
                      "model.name": "mlp", "model.hidden": (64,)})
  splits = _splits()
  fns, loss_fn, num, _ = references.reference_model_fns(config, splits, "experts")
  params = jax.vmap(fns.init)(jax.random.split(jax.random.PRNGKey(0), num))
  variables = {"params": params[0], **params[1]}
  refs = references.ReferenceModels("experts", variables, loss_fn)
  seen = []
  real = stage1_memory.fitting_batch

  def spy(compile_at, *args, **kw):
    b, compiled = real(compile_at, *args, **kw)
    seen.append(device_memory.compiled_memory(compiled))
    return b, compiled

  monkeypatch.setattr(stage1_memory, "fitting_batch", spy)
  table = references.precompute_loss_table(refs, splits.train, 8, config)
  param_bytes = sum(a.nbytes for a in jax.tree.leaves(variables))
  assert seen[0]["argument"] >= param_bytes > seen[0]["temp"]
  # The untrained MLP's logits reach ~200, so a loss of 0.4 is a difference of float32
  # numbers that large: batches of 8 vs 48 rows (another matmul blocking, which also
  # differs between CPUs) move it by ~1e-5 (seen: 1.5e-5 on one of 144 entries).
  np.testing.assert_allclose(table, np.asarray(loss_fn(variables, splits.train.x,
                                                       splits.train.y)), rtol=1e-5, atol=1e-4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_WORKER = """
import sys, numpy as np, jax
port, pid, num, out = sys.argv[1:5]
if int(num) > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", int(num), int(pid))
sys.path.insert(0, "tests")
import test_stage1 as t
from reducr_jax.train import device_memory
from reducr_jax.train import references
splits = t._splits(n=45)            # 45 rows: uneven process shares
config = t._config(**{"experts.strategy": "map", "experts.num_steps": 2,
                      "model.name": "mlp", "model.hidden": (8,)})
refs = references.get_reference_models(config, splits, out + "/work")
table = references.precompute_loss_table(refs, splits.train, 8)
np.save(out + f"/table{pid}.npy", table)
np.save(out + f"/leaf{pid}.npy", np.asarray(jax.tree.leaves(refs.params)[0]))
"""


def test_sharded_table_equals_single_process(tmp_path):
  # 2 processes × 2 fake devices: stage 1 over 4 devices, each process scores its half of
  # the pool and all-gathers it; equals one process on 1 device.
  env = lambda d: dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}",  # noqa: E731
                       JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  port = _free_port()
  multi = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(i), "2",
                             str(tmp_path / "multi")], cwd=REPO, env=env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, "-c", _WORKER, "0", "0", "1",
                           str(tmp_path / "single")], cwd=REPO, env=env(1),
                          capture_output=True, text=True)
  outs = [p.communicate(timeout=300)[0] for p in multi]
  assert single.returncode == 0, single.stderr[-3000:]
  assert all(p.returncode == 0 for p in multi), [o[-3000:] for o in outs]
  ref = np.load(tmp_path / "single" / "table0.npy")
  assert ref.shape == (45, 3)
  for pid in range(2):
    np.testing.assert_allclose(np.load(tmp_path / "multi" / f"table{pid}.npy"), ref,
                               rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.load(tmp_path / "multi" / f"leaf{pid}.npy"),
                               np.load(tmp_path / "single" / "leaf0.npy"), rtol=2e-4,
                               atol=2e-5)


def test_expert_checkpoint_criterion_by_hand():
  # Σwℓ = [6, 9] over N = 4 points whose weights sum to [3, 12].
  sums, wsums = np.array([6.0, 9.0]), np.array([3.0, 12.0])
  np.testing.assert_allclose(stage1_trainer.checkpoint_criterion(sums, wsums, 4, "mean"),
                             [1.5, 2.25])
  np.testing.assert_allclose(stage1_trainer.checkpoint_criterion(sums, wsums, 4, "weight_sum"),
                             [2.0, 0.75])


@pytest.mark.parametrize("select_on, expected", [("val", 1.0), ("train_pool", 0.5)])
def test_expert_checkpoint_follows_the_chosen_split(monkeypatch, select_on, expected):
  """Scripted criteria per split (val: 3, 1, 2; train pool: 0.5, 2, 3 at the three
  evaluations): the kept loss is the chosen split's minimum, and only that split is read."""
  script = {7: [3.0, 1.0, 2.0], 11: [0.5, 2.0, 3.0]}       # by split length
  seen = []

  def scripted(loss_sums, weight_sums, count, normalisation):
    seen.append(count)
    return np.array([script[count][len(seen) - 1]] * len(loss_sums))

  monkeypatch.setattr(stage1_trainer, "checkpoint_criterion", scripted)
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config = configuration.with_overrides(config, {
      "model.hidden": (4,), "experts.num_steps": 3, "experts.eval_every": 1,
      "experts.batch_size": 8, "eval_batch_size": 8, "num_devices": 1,
      "experts.strategy": "vmap", "experts.select_on": select_on})
  splits = fakes.flat_splits()
  fns, _, num, gamma = references.reference_model_fns(config, splits, "experts")
  _, best_val = stage1_trainer.train_reference_models(config, splits, "experts", fns, num, gamma)
  np.testing.assert_allclose(best_val, [expected] * 3)
  assert seen == [7 if select_on == "val" else 11] * 3


@pytest.mark.parametrize("kind", ["experts", "multihead"])
def test_train_pool_and_weight_sum_run_for_every_kind(kind):
  """The official pair (train-pool checkpoints, Σwℓ/Σw) through the real criterion: one
  finite loss per stacked expert, one for the multi-head model (mean over its heads)."""
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config = configuration.with_overrides(config, {
      "model.hidden": (4,), "experts.num_steps": 2, "experts.eval_every": 1,
      "experts.batch_size": 8, "eval_batch_size": 8, "num_devices": 1,
      "experts.strategy": "vmap", "experts.select_on": "train_pool",
      "experts.loss_normalisation": "weight_sum",
      "experts.losses": "multihead" if kind == "multihead" else "precomputed"})
  splits = fakes.flat_splits()
  fns, _, num, gamma = references.reference_model_fns(config, splits, kind)
  _, best_val = stage1_trainer.train_reference_models(config, splits, kind, fns, num, gamma)
  assert best_val.shape == ((3,) if kind == "experts" else (1,))
  assert np.all(np.isfinite(best_val)) and np.all(best_val > 0)
