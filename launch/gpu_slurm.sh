#!/usr/bin/env bash
# Multi-node GPU run of `python -m reducr_jax.main` under SLURM: one process per node.
#
#   sbatch launch/gpu_slurm.sh configs/default.py --config.num_steps=1000
#   WORKDIR=/shared/runs/exp1 sbatch --nodes=4 launch/gpu_slurm.sh configs/default.py
#   launch/gpu_slurm.sh --dry-run configs/default.py --config.num_steps=10   # print only
#
# Submit from the repository root, with the environment that has reducr_jax installed
# active (sbatch passes the submitting shell's environment to the job). Arguments: the
# config file (default configs/default.py), then any reducr_jax.main flags/overrides.
# Environment: WORKDIR (default runs/$SLURM_JOB_ID, relative to the submit directory; it
# must be on a file system all nodes share), PYTHON (default python), COORDINATOR_PORT,
# DRY_RUN=1 (same as --dry-run).
#
# The #SBATCH lines below are defaults; options given to sbatch override them.
#SBATCH --job-name=reducr
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#
# Elastic restart. The trainer resumes from the last checkpoint in WORKDIR/checkpoints, so
# resubmitting with the same WORKDIR continues a run that died (node failure, time limit,
# preemption); at most `config.checkpoint_every` steps are redone. To let SLURM do that by
# itself, remove one '#' from each line below:
#   --requeue           the job goes back to the queue when it is preempted or its node
#                       fails; a requeued job keeps its SLURM_JOB_ID, so the default
#                       WORKDIR=runs/$SLURM_JOB_ID resumes too. (SLURM_RESTART_COUNT counts
#                       the restarts.)
#   --signal=B:USR1@300 sends USR1 to this script 5 minutes before the time limit; with the
#                       trap below uncommented, the job requeues itself and continues in a
#                       fresh allocation from its last checkpoint.
##SBATCH --requeue
##SBATCH --signal=B:USR1@300
#
# Why one process per node (not one per GPU):
#   * the trainer pmaps its step over jax.local_devices(): one process drives all of its
#     node's GPUs, which is exactly the trainer's data-parallel layout;
#   * host-side work (loading the data set, building batches, the reference models' tables)
#     is done once per node instead of once per GPU;
#   * srun starts one task per node, so SLURM_NNODES / SLURM_NODEID are the process count
#     and index, the same numbers JAX's SLURM detection in jax.distributed.initialize()
#     reads from the SLURM_* variables.
# The coordinator (process 0's host) is the first node of the allocation, and the flags
# --coordinator_address/--num_processes/--process_id are passed explicitly, so the run does
# not depend on auto-detection. JAX_LOCAL_DEVICE_IDS lists all of the node's GPUs: without
# it, jax.distributed.initialize() under srun restricts each process to GPU $SLURM_LOCALID
# (i.e. GPU 0 with one task per node).
#
# Alternative, one process per GPU (also supported by JAX; each process then sees ONE
# device and pmaps over it, and data loading runs once per GPU): submit with
# `--ntasks-per-node=<gpus per node>`, and in the srun line below use --ntasks-per-node=$G,
# --num_processes=$SLURM_NTASKS, --process_id="$SLURM_PROCID", and in the task's command
# `export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID JAX_LOCAL_DEVICE_IDS=0` (or leave
# JAX_LOCAL_DEVICE_IDS unset and let jax.distributed.initialize() pick $SLURM_LOCALID).

set -euo pipefail

usage() {
  cat <<'EOF'
usage: sbatch [sbatch options] launch/gpu_slurm.sh [CONFIG] [reducr_jax.main flags...]
       launch/gpu_slurm.sh --dry-run [CONFIG] [flags...]    (or DRY_RUN=1; no SLURM needed)

Starts one `python -m reducr_jax.main` process per node with srun; each process drives all
of its node's GPUs. CONFIG defaults to configs/default.py, e.g.
  sbatch launch/gpu_slurm.sh configs/default.py --config.num_steps=1000

environment:
  WORKDIR           run directory on a shared file system (default: runs/$SLURM_JOB_ID);
                    resubmitting with the same WORKDIR resumes from its last checkpoint
  PYTHON            interpreter with reducr_jax installed (default: python)
  COORDINATOR_PORT  process 0's port (default: derived from the job id, 61440-65535)
  GPUS_PER_NODE     GPUs per node (default: $SLURM_GPUS_ON_NODE, else counted by nvidia-smi)
  DRY_RUN=1         print the commands instead of running them
EOF
}

die() {
  echo "gpu_slurm.sh: error: $*" >&2
  exit 2
}

# quote / join_quoted, shared with tpu_vm.sh. sbatch runs a copy of this script from its
# spool directory, so the file is looked for next to this script, then in the repository
# the job was submitted from (the run works from there anyway, see below).
for dir in "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/launch"; do
  if [[ -f "$dir/quoting.sh" ]]; then
    # shellcheck source=quoting.sh
    source "$dir/quoting.sh"
    break
  fi
done
declare -F join_quoted >/dev/null ||
  die "launch/quoting.sh not found: submit from the repository root"

# First host of a SLURM node list without scontrol (dry runs only): 'gpu[003-006,9],x' ->
# 'gpu003'. The real run asks `scontrol show hostnames`, which knows every format.
first_host_of() {
  local list="$1" prefix rest
  prefix="${list%%[\[,]*}"
  rest="${list:${#prefix}}"
  if [[ "$rest" == \[* ]]; then
    rest="${rest#\[}"
    printf '%s%s' "$prefix" "${rest%%[-,\]]*}"
  else
    printf '%s' "$prefix"
  fi
}

DRY_RUN="${DRY_RUN:-0}"
case "${1:-}" in
  --dry-run) DRY_RUN=1; shift ;;
  -h | --help) usage; exit 0 ;;
esac
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN must be 0 or 1, got '$DRY_RUN'"

CONFIG="configs/default.py"
if [[ $# -gt 0 && "$1" != -* ]]; then
  CONFIG="$1"
  shift
fi
FLAGS=("$@")

# --- The allocation ------------------------------------------------------------------------
# Test hook: the scontrol executable (the tests point it at a stub, or at nothing).
SCONTROL="${SCONTROL:-scontrol}"
if ((DRY_RUN)); then
  # Usable outside SLURM: defaults for what sbatch would have set.
  JOB_ID="${SLURM_JOB_ID:-dry-run}"
  NNODES="${SLURM_NNODES:-2}"
  NODELIST="${SLURM_JOB_NODELIST:-localhost}"
  CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-}"
  GPUS="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
  echo "# dry run: nothing is started (job $JOB_ID, $NNODES nodes: $NODELIST)"
else
  [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_NNODES:-}" && -n "${SLURM_JOB_NODELIST:-}" ]] ||
    die "not inside a SLURM job: submit with sbatch (or pass --dry-run)"
  JOB_ID="$SLURM_JOB_ID"
  NNODES="$SLURM_NNODES"
  NODELIST="$SLURM_JOB_NODELIST"
  CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-}"
  GPUS="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}"
  if [[ -z "$GPUS" ]] && command -v nvidia-smi >/dev/null; then
    GPUS="$(nvidia-smi --list-gpus | grep -c '^GPU')" || true
  fi
  # sbatch runs a copy of this script from its spool directory: work from where it was
  # submitted (the repository root), like an interactive run would.
  cd "${SLURM_SUBMIT_DIR:-.}"
fi
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "bad node count '$NNODES'"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] ||
  die "cannot tell the GPUs per node (got '$GPUS'): request them with --gpus-per-node or set GPUS_PER_NODE"
[[ -f "${CONFIG%%:*}" ]] || die "config '$CONFIG' not found (submit from the repository root)"

WORKDIR="${WORKDIR:-runs/$JOB_ID}"
PYTHON="${PYTHON:-python}"
# Same default range as JAX's own SLURM detection: a port per job, so two jobs sharing a
# first node do not collide.
if [[ "$JOB_ID" =~ ^[0-9]+$ ]]; then
  PORT="${COORDINATOR_PORT:-$((61440 + JOB_ID % 4096))}"
else
  PORT="${COORDINATOR_PORT:-61440}"
fi

# --- The coordinator: process 0 runs on the first node of the allocation --------------------
HOSTNAMES_CMD=("$SCONTROL" show hostnames "$NODELIST")
if command -v "$SCONTROL" >/dev/null; then
  COORDINATOR_HOST="$("${HOSTNAMES_CMD[@]}" | head -n1)"
elif ((DRY_RUN)); then
  echo "# would run: $(join_quoted "${HOSTNAMES_CMD[@]}") | head -n1   ($SCONTROL not found: taking the first entry of the node list)"
  COORDINATOR_HOST="$(first_host_of "$NODELIST")"
else
  die "'$SCONTROL' not found: cannot find the first node of $NODELIST"
fi
[[ -n "$COORDINATOR_HOST" ]] || die "no host in node list '$NODELIST'"

# --- One task per node, each driving all of its node's GPUs ---------------------------------
DEVICE_IDS="$(seq -s, 0 $((GPUS - 1)))"
SRUN=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --label)
# Since Slurm 22.05 srun no longer inherits the job's --cpus-per-task: pass it on.
[[ -n "$CPUS_PER_TASK" ]] && SRUN+=(--cpus-per-task="$CPUS_PER_TASK")
MAIN=("$PYTHON" -m reducr_jax.main --config="$CONFIG" --workdir="$WORKDIR"
  --coordinator_address="$COORDINATOR_HOST:$PORT" --num_processes="$NNODES")
# The process index differs per node, so each task expands $SLURM_NODEID itself: the
# command runs under `bash -c` with that one reference left for the task's shell.
TASK="export JAX_LOCAL_DEVICE_IDS=$DEVICE_IDS; exec $(join_quoted "${MAIN[@]}") --process_id=\"\$SLURM_NODEID\" $(join_quoted ${FLAGS[@]+"${FLAGS[@]}"})"
TASK="${TASK% }"

if ((DRY_RUN)); then
  join_quoted "${SRUN[@]}" bash -c "$TASK"
  echo
  exit 0
fi

echo "gpu_slurm.sh: job $JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $NNODES nodes x $GPUS GPUs," \
  "coordinator $COORDINATOR_HOST:$PORT, workdir $WORKDIR" >&2
echo "+ $(join_quoted "${SRUN[@]}" bash -c "$TASK")" >&2

# With `#SBATCH --signal=B:USR1@300` (see the header), uncomment these lines and delete the
# `exec` line below to requeue before the time limit (bash runs the trap only while it
# waits, hence srun in the background); the requeued job resumes from WORKDIR:
#   trap 'echo "time limit near: requeueing $JOB_ID" >&2; scontrol requeue "$JOB_ID"' USR1
#   "${SRUN[@]}" bash -c "$TASK" &
#   wait $! || wait $!
#   exit
exec "${SRUN[@]}" bash -c "$TASK"
