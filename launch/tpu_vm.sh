#!/usr/bin/env bash
# Runs `python -m reducr_jax.main` on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm.sh --name=reducr-v4 --zone=us-central2-b --workdir=/mnt/shared/runs/exp1 \
#       --config=configs/default.py -- --config.num_steps=1000
#
# Steps (each one `gcloud compute tpus tpu-vm ...` command; --dry-run prints them all):
#   1. describe NAME: reuse the TPU VM if it exists (start it if STOPPED), else create it.
#   2. `git archive` the committed tree (--ref, default HEAD) into a tarball and scp it to
#      every worker (--worker=all).
#   3. on every worker: unpack it into ~/reducr_jax and install it with `jax[tpu]` into
#      ~/reducr-venv (a uv-managed Python >= 3.11: the TPU images ship Python 3.10, which
#      jax >= 0.7 no longer supports). --skip-install only re-ships the code.
#   4. on every worker: start the run in the background (nohup), log in ~/reducr_logs/.
#      No coordinator flags: on a TPU VM `jax.distributed.initialize()` finds the other
#      workers and this worker's index from the TPU metadata itself.
#   5. stream worker 0's log (`tail -F`); Ctrl-C stops the tail, not the run.
#
# --workdir must be one directory that every worker sees (checkpoints are written
# collectively by all processes): a shared disk (Filestore/NFS) or a GCS bucket mounted with
# gcsfuse at the same path on every worker, or a gs:// path (see launch/README.md).
# Re-running the same command with the same --workdir resumes from its last checkpoint.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# Test hook: the gcloud executable (the tests point it at a stub that must never run).
readonly GCLOUD="${GCLOUD:-gcloud}"
# Remote layout in each worker's home directory ($HOME is expanded there, not here).
readonly REMOTE_SRC="\$HOME/reducr_jax"
readonly REMOTE_VENV="\$HOME/reducr-venv"
readonly REMOTE_LOGS="\$HOME/reducr_logs"
readonly REMOTE_TARBALL="reducr_jax.tar.gz"

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh --workdir=DIR [options] [-- --config.a.b=value ...]

Creates (or reuses) a Cloud TPU VM slice, ships and installs this repository on every
worker, starts `python -m reducr_jax.main` on all of them and streams worker 0's log.

options (--opt=value or --opt value):
  --name NAME              TPU VM name (default: reducr-tpu, or $TPU_NAME)
  --zone ZONE              zone (default: us-central2-b, or $TPU_ZONE)
  --project PROJECT        GCP project (default: gcloud's configured project)
  --accelerator-type TYPE  slice type, used on create (default: v4-32)
  --version VERSION        TPU software version, used on create (default: tpu-ubuntu2204-base;
                           v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
  --spot                   create the TPU VM as a Spot VM (cheaper, can be preempted)
  --workdir DIR            required: absolute path every worker can write (shared disk or
                           gcsfuse mount), or gs://BUCKET/PATH; checkpoints, logs, results
  --config PATH            config file, relative to the repository root
                           (default: configs/default.py)
  --ref REF                git revision to ship (default: HEAD; uncommitted changes are
                           not shipped)
  --python VERSION         Python version of the workers' venv (default: 3.11)
  --skip-install           only re-ship the code; reuse the workers' existing venv
  --no-tail                start the run and return instead of streaming the log
  --stop                   stop the run started on NAME (all workers) and exit
  --dry-run                print every command instead of running it
  -h, --help               this help
  -- ARGS...               passed to reducr_jax.main, e.g. --config.num_steps=1000
EOF
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# quote / join_quoted: shell quoting shared with gpu_slurm.sh.
# shellcheck source=quoting.sh
source "$REPO_ROOT/launch/quoting.sh"

# Runs a command, or prints it (copy-pastable) under --dry-run.
run() {
  if ((DRY_RUN)); then
    join_quoted "$@"
    echo
  else
    echo "+ $(join_quoted "$@")" >&2
    "$@"
  fi
}

NAME="${TPU_NAME:-reducr-tpu}"
ZONE="${TPU_ZONE:-us-central2-b}"
PROJECT=""
ACCELERATOR_TYPE="v4-32"
VERSION="tpu-ubuntu2204-base"
SPOT=0
WORKDIR=""
CONFIG="configs/default.py"
REF="HEAD"
PYTHON_VERSION="3.11"
SKIP_INSTALL=0
TAIL=1
STOP=0
DRY_RUN=0
OVERRIDES=()

while [[ $# -gt 0 ]]; do
  # `--opt=value` -> `--opt value`
  if [[ "$1" == --?*=* ]]; then
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --no-tail) TAIL=0; shift ;;
    --stop) STOP=1; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    --name | --zone | --project | --accelerator-type | --version | --workdir | --config | \
    --ref | --python)
      [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
      case "$1" in
        --name) NAME="$2" ;;
        --zone) ZONE="$2" ;;
        --project) PROJECT="$2" ;;
        --accelerator-type) ACCELERATOR_TYPE="$2" ;;
        --version) VERSION="$2" ;;
        --workdir) WORKDIR="$2" ;;
        --config) CONFIG="$2" ;;
        --ref) REF="$2" ;;
        --python) PYTHON_VERSION="$2" ;;
      esac
      shift 2
      ;;
    *) die "unknown argument '$1' (config overrides go after '--'; see --help)" ;;
  esac
done

[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name '$NAME' is not a valid TPU name (lowercase letters, digits, '-')"

# Every gcloud call names the same TPU in the same zone (and project).
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
TPU=(compute tpus tpu-vm)
readonly LOG="$REMOTE_LOGS/$NAME.log"
readonly PIDFILE="$REMOTE_LOGS/$NAME.pid"

if ((STOP)); then
  ((DRY_RUN)) || command -v "$GCLOUD" >/dev/null || die "'$GCLOUD' not found: install the Google Cloud CLI"
  run "$GCLOUD" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
    --command="if [ -f $PIDFILE ]; then kill \$(cat $PIDFILE) 2>/dev/null || true; rm -f $PIDFILE; fi"
  exit 0
fi

# --- Check the arguments before anything is created ----------------------------------------
[[ -n "$WORKDIR" ]] || die "--workdir is required: a directory every worker can write (see --help)"
[[ "$WORKDIR" == /* || "$WORKDIR" == gs://* ]] ||
  die "--workdir '$WORKDIR' must be an absolute path on a disk every worker shares, or gs://..."
[[ -f "$REPO_ROOT/${CONFIG%%:*}" ]] ||
  die "--config '$CONFIG': no such file under $REPO_ROOT (give it relative to the repository root)"
[[ "$CONFIG" != /* ]] || die "--config must be relative to the repository root, got '$CONFIG'"
if ((!DRY_RUN)); then
  command -v "$GCLOUD" >/dev/null || die "'$GCLOUD' not found: install the Google Cloud CLI"
  git -C "$REPO_ROOT" rev-parse --verify --quiet "$REF^{commit}" >/dev/null ||
    die "--ref '$REF' is not a commit of $REPO_ROOT"
  if [[ "$REF" == HEAD && -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    echo "tpu_vm.sh: warning: uncommitted changes are not shipped (git archive $REF)" >&2
  fi
fi

# --- 1. Create the TPU VM, or reuse it -------------------------------------------------------
CREATE=("$GCLOUD" "${TPU[@]}" create "$NAME" "${WHERE[@]}"
  --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
((SPOT)) && CREATE+=(--spot)
DESCRIBE=("$GCLOUD" "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)')
if ((DRY_RUN)); then
  echo "# 1. reuse the TPU VM if it exists (started if STOPPED), else create it"
  run "${DESCRIBE[@]}"
  run "${CREATE[@]}"
else
  if state="$("${DESCRIBE[@]}" 2>/dev/null)"; then
    echo "tpu_vm.sh: reusing TPU VM $NAME (state $state)" >&2
    case "$state" in
      READY) ;;
      STOPPED) run "$GCLOUD" "${TPU[@]}" start "$NAME" "${WHERE[@]}" ;;
      *) die "TPU VM $NAME is $state; wait for READY, or delete it ($GCLOUD ${TPU[*]} delete $NAME ${WHERE[*]}) and re-run" ;;
    esac
  else
    run "${CREATE[@]}"
  fi
fi

# --- 2. Ship the code to every worker --------------------------------------------------------
TARBALL="${TMPDIR:-/tmp}/reducr_jax-$NAME.tar.gz"
((DRY_RUN)) && echo "# 2. ship the committed tree ($REF) to every worker"
run git -C "$REPO_ROOT" archive --format=tar.gz --output="$TARBALL" "$REF"
run "$GCLOUD" "${TPU[@]}" scp "$TARBALL" "$NAME:$REMOTE_TARBALL" "${WHERE[@]}" --worker=all

# --- 3. Unpack and install it on every worker ------------------------------------------------
# Refuses to replace the code under a run that is still going (stop it with --stop).
SETUP="set -e
if [ -f $PIDFILE ] && kill -0 \$(cat $PIDFILE) 2>/dev/null; then
  echo \"a run is still going on \$(hostname) (pid \$(cat $PIDFILE)): stop it with launch/tpu_vm.sh --stop --name=$NAME\" >&2; exit 1
fi
rm -rf $REMOTE_SRC && mkdir -p $REMOTE_SRC && tar -xzf $REMOTE_TARBALL -C $REMOTE_SRC"
if ((!SKIP_INSTALL)); then
  SETUP+="
python3 -m pip install --user --quiet --upgrade uv
[ -x $REMOTE_VENV/bin/python ] || \$HOME/.local/bin/uv venv --python $(quote "$PYTHON_VERSION") $REMOTE_VENV
\$HOME/.local/bin/uv pip install --quiet --python $REMOTE_VENV/bin/python \"jax[tpu]\" -e $REMOTE_SRC"
fi
((DRY_RUN)) && echo "# 3. unpack$( ((SKIP_INSTALL)) || echo " and install (jax[tpu] + reducr_jax in $REMOTE_VENV)") on every worker"
run "$GCLOUD" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$SETUP"

# --- 4. Start the run on every worker --------------------------------------------------------
# Same command on all workers; jax.distributed.initialize() takes the process index and
# the coordinator (worker 0) from the TPU metadata, so no --coordinator_address here.
MAIN=(-m reducr_jax.main --config="$CONFIG" --workdir="$WORKDIR" --multi_process ${OVERRIDES[@]+"${OVERRIDES[@]}"})
START="set -e
mkdir -p $REMOTE_LOGS
cd $REMOTE_SRC
nohup $REMOTE_VENV/bin/python $(join_quoted "${MAIN[@]}") > $LOG 2>&1 < /dev/null &
echo \$! > $PIDFILE"
((DRY_RUN)) && echo "# 4. start the run on every worker (log: $LOG on each)"
run "$GCLOUD" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$START"

# --- 5. Stream process 0's log ----------------------------------------------------------------
if ((TAIL)); then
  ((DRY_RUN)) && echo "# 5. stream worker 0's log (Ctrl-C stops the tail, not the run)"
  run "$GCLOUD" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="tail -n +1 -F $LOG"
else
  echo "# log: $(join_quoted "$GCLOUD" "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="tail -n +1 -F $LOG")"
fi
