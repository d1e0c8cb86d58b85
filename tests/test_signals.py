"""SIGTERM / SIGINT end a run with one line and 143 / 130 every time: no crash at exit, no
step left without its manifest by a second signal, and every process of a multi-process
run stops, at the same stage-1 step (issue 25, items 6 and 11)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from reducr_jax.run import checkpointing
from reducr_jax.run import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# cli.run's exit path while JAX is busy in daemon threads, as the batch-prefetch thread is
# (device_put) when a signal stops stage 1. A normal interpreter exit aborted here in 10
# of 10 runs (SIGABRT / SIGSEGV after the right line, 8-10 lines of stderr).
_BUSY_EXIT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.argv[1:] = ["--config=configs/default.py", "--workdir=" + sys.argv[1]]
    from reducr_jax import cli

    def main(argv):
      import numpy as np, jax, jax.numpy as jnp
      from reducr_jax.run import preemption
      def busy():
        x = np.ones((256, 256), np.float32)
        while True:
          jnp.tanh(jax.device_put(x)).block_until_ready()
      for _ in range(8):
        threading.Thread(target=busy, daemon=True).start()
      time.sleep(0.5)
      with preemption.Handler():
        threading.Timer(0.2, os.kill, (os.getpid(), signal.%s)).start()
        time.sleep(30)

    cli.run(main)
    """)


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_before_the_loop_exits_cleanly_while_jax_threads_run(tmp_path, sig, code):
  script = tmp_path / "busy.py"
  script.write_text(_BUSY_EXIT % sig)
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, str(script), str(tmp_path / "w")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == code, out.stderr
  assert out.stderr == (f"stopped by {sig} outside the training loop (nothing to save there; "
                        "caches and checkpoints are kept); run the same command to resume\n")


def test_a_stop_swallowed_by_library_code_is_raised_at_the_next_step():
  """The handler raises wherever the main thread is; code that catches Exception there
  (seen inside stage 1) must not turn the stop into a later, different one."""
  with preemption.Handler():
    try:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
    except Exception:  # pylint: disable=broad-except  # what such library code does
      pass
    with pytest.raises(preemption.Preempted, match="outside the training loop") as e:
      preemption.boundary(3, "stage 1")
    assert e.value.exit_code == 143
  with preemption.Handler():                     # a new run starts clean
    preemption.boundary(1, "stage 1")


def test_a_stop_raised_in_a_gc_callback_is_silent_and_raised_at_the_next_step(capfd):
  """Seen in 1 of 6 CLI trials: the handler ran inside jax's gc callback, and Python
  printed the stop as "Exception ignored in ..." (7 extra stderr lines)."""
  import gc  # pylint: disable=g-import-not-at-top
  def callback(phase, info):  # pylint: disable=unused-argument
    if phase == "start":
      gc.callbacks.remove(callback)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.5)
  with preemption.Handler():
    gc.callbacks.append(callback)
    gc.collect()
    with pytest.raises(preemption.Preempted, match="outside the training loop"):
      preemption.boundary(2, "stage 1")
  assert capfd.readouterr().err == ""


def test_a_second_signal_waits_for_the_checkpoint_being_written(tmp_path, capsys):
  """The first signal asks for a stop after the step; a second one while its checkpoint
  is written stops the run once the step and its manifest are complete."""
  ckpt = checkpointing.Checkpointer(tmp_path)
  with preemption.Handler() as h:
    h.defer()
    os.kill(os.getpid(), signal.SIGTERM)
    assert h.requested(4)
    with pytest.raises(preemption.Preempted) as e:
      with h.critical():
        os.kill(os.getpid(), signal.SIGTERM)              # arrives during the save
        ckpt.save(4, {"a": np.arange(300.0)})
    assert ckpt.verify(4) is None                          # manifest written
  assert e.value.exit_code == 143 and not e.value.collective
  assert str(e.value) == ("stopped at once by a second SIGTERM; run the same command to "
                          "resume from the last checkpoint")
  assert "stopping once the checkpoint is written" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  ckpt.close()


def test_a_second_signal_outside_a_save_stops_at_once():
  with preemption.Handler() as h:
    h.defer()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(preemption.Preempted) as e:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert e.value.exit_code == 130 and "second SIGINT" in str(e.value)
  assert "before the training loop" not in str(e.value)


@pytest.mark.parametrize("signalled", [True, False])
def test_every_process_stops_at_the_same_stage_one_step(monkeypatch, signalled):
  """Several processes: a signal before the loop only sets the flag; at each stage-1
  step the processes all-gather it and all stop there, signalled or not."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  gathered = []
  others = iter([0, 0 if signalled else signal.SIGTERM])   # the other process's flag
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: gathered.append(int(x)) or np.array([int(x), next(others)]))
  with preemption.Handler() as h:
    preemption.boundary(1, "stage 1")                      # nothing pending anywhere
    if signalled:
      os.kill(os.getpid(), signal.SIGTERM)                 # deferred: no exception
      time.sleep(0.1)
    with pytest.raises(preemption.Preempted) as e:
      preemption.boundary(2, "stage 1")
  assert gathered == [0, signal.SIGTERM if signalled else 0]
  assert e.value.exit_code == 143 and e.value.collective
  assert str(e.value) == ("stopped by SIGTERM during stage 1 at step 2 (all 2 processes; "
                          "nothing to save there); run the same command to resume")
  assert h.signum == signal.SIGTERM
  preemption.boundary(3, "stage 1")                         # no handler: nothing


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The signal is deferred until the first stage-1 step however early it comes, so a
# short stage 1 is enough.
MULTI = ["--config=configs/default.py", "--config.dataset.name=digits",
         "--config.model.hidden=(16,)", "--config.batch_size=80", "--config.num_steps=10",
         "--config.experts.num_steps=20", "--config.experts.eval_every=20",
         "--config.experts.batch_size=64", "--config.eval_every=10",
         "--config.log_every=10", "--config.checkpoint_every=10",
         "--config.selection.method=rho_loss"]


def _two_processes(workdir):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return [subprocess.Popen([sys.executable, "-m", "reducr_jax.main", *MULTI,
                            f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
                            "--num_processes=2", f"--process_id={i}"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for i in range(2)]


@pytest.mark.slow
def test_two_processes_stop_together_in_stage_one_and_resume_exactly(tmp_path):
  """SIGTERM to process 1 only, during stage 1: both processes stop (143, one line each)
  at the same expert step, and the same command then gives the uninterrupted results."""
  ref = tmp_path / "uninterrupted"
  procs = _two_processes(ref)
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  work = tmp_path / "interrupted"
  procs = _two_processes(work)
  deadline = time.time() + 300
  while not (work / "config.json").exists() and time.time() < deadline:  # handlers are in
    time.sleep(0.05)
  time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [143, 143], outs
  lines = [err.strip().splitlines() for _, err in outs]
  assert lines[1][0] == "received SIGTERM: stopping at the next step boundary, with every " \
      "process (send it again to stop at once)"
  last = [l[-1] for l in lines]
  assert last[0] == last[1] and last[0].startswith("stopped by SIGTERM during stage 1 at step ")
  assert len(lines[0]) == 1 and len(lines[1]) == 2
  assert not (work / "results.json").exists() and not (work / "experts").exists()
  procs = _two_processes(work)
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert (work / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  assert (work / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
  assert json.loads((work / "results.json").read_text())["num_steps"] == 10
