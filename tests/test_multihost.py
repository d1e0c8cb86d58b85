"""Two processes on localhost (2 fake CPU devices each) equal one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.run import checkpointing
from reducr_jax.config import configuration
from reducr_jax import models
from reducr_jax.train import optimizers
from reducr_jax.train import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/default.py", "--config.model.hidden=(32,)",
         "--config.batch_size=80", "--config.num_steps=30", "--config.experts.num_steps=40",
         "--config.experts.eval_every=20", "--config.eval_every=10", "--config.log_every=5",
         "--config.checkpoint_every=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _main(workdir, *extra):
  return [sys.executable, "-m", "reducr_jax.main", *FLAGS, f"--workdir={workdir}", *extra]


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_processes_equal_one(tmp_path):
  port = _free_port()
  multi, single = tmp_path / "multi", tmp_path / "single"
  procs = [subprocess.Popen(_main(multi, f"--coordinator_address=127.0.0.1:{port}",
                                  "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO, env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  ref = subprocess.run(_main(single), cwd=REPO, env=_env(4), capture_output=True, text=True)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert ref.returncode == 0, ref.stderr
  assert all(p.returncode == 0 for p in procs), outs
  assert "worst" in outs[0] and "worst" not in outs[1]        # only process 0 reports

  a, b = _log(multi), _log(single)
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    if "train/class_weights" in ra:
      # Same global selections (class counts) and the same class weights.
      assert ra["train/cumulative_selected_counts"] == rb["train/cumulative_selected_counts"]
      np.testing.assert_allclose(ra["train/class_weights"], rb["train/class_weights"],
                                 rtol=1e-5, atol=1e-7)
  ra = json.loads((multi / "results.json").read_text())
  rb = json.loads((single / "results.json").read_text())
  assert ra["test"]["per_class_accuracy"] == rb["test"]["per_class_accuracy"]

  # Final parameters, from the checkpoints both runs wrote.
  pa = checkpointing.Checkpointer(multi / "checkpoints")
  pb = checkpointing.Checkpointer(single / "checkpoints")
  assert pa.latest_step() == pb.latest_step() == 30
  template = _template()
  state_a = pa.restore(template)
  state_b = pb.restore(template)
  leaves_a = jax.tree.leaves(state_a["state"].params)
  leaves_b = jax.tree.leaves(state_b["state"].params)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state_a["state"].selector_state.log_w,
                             state_b["state"].selector_state.log_w, rtol=1e-5)


def _template():
  """The trainer's checkpoint structure for FLAGS (MLP (32,), 64 digits features)."""
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  config.model.hidden = (32,)
  model = models.create_model(config.model, 10)
  cfg = train_state.StepConfig.from_config(config, 10, 1, "table")
  state = train_state.init_state(jax.random.PRNGKey(0),
                           lambda r: model.init(r, jnp.zeros((1, 64)))["params"],
                           optimizers.make_optimizer(config.optimizer), cfg, jax.random.PRNGKey(1))
  best = {"params": {"params": state.params}, "worst_val": np.float32(0), "step": np.int32(0)}
  return jax.tree.map(np.asarray, {"state": state, "best": best})
