"""What the benchmark scripts share: models, interleaved timing, FLOPs, machine info, output.

The scripts in this folder import it as ``import harness``: run as
``python benchmarks/<name>.py``, a script's own folder is the first entry of ``sys.path``.

  * :class:`SmallCNN` and :func:`make_model` — the benchmark models (an MLP 2×256 on 40
    features, a small CNN on 32×32×3);
  * :func:`time_call`, :func:`round_robin`, :func:`summarize`, :func:`ratios` — timing:
    every variant compiled and warmed up by the caller first, then timed in interleaved
    rounds, each timing ending in ``block_until_ready``, and summarised as medians,
    quartiles and minima;
  * :func:`flops`, :func:`compiled_flops`, :func:`memory_stats`, :func:`mib` — FLOPs and
    memory of a compiled function from XLA's cost and memory analyses;
  * :data:`STEP_VARIANTS`, :func:`build_train_step`, :func:`stepper`, :func:`shard`,
    :func:`replicate` — the
    library's pmapped train step (``reducr_jax.train.selection_step.make_train_step``) built for one
    selection variant on random, device-resident inputs (``train_step.py``,
    ``scaling.py``, ``memory.py``);
  * :func:`run_python` — runs a script in a child process (fresh ``XLA_FLAGS``);
  * :func:`markdown_table` — rows as a markdown table;
  * :func:`machine_info`, :func:`finish_info`, :func:`machine_line`, :func:`load_line` —
    what ran the benchmark (versions, backend, device, cores, load average, date);
  * :func:`argument_parser`, :func:`add_model_flags`, :func:`add_out_flag`,
    :func:`flag_values`, :func:`write_results` — the shared flags, and the output
    ``benchmarks/results/<name>_<backend>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.jax_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reducr_jax.train import device_memory
from reducr_jax import models
from reducr_jax.core import stacked_experts
from reducr_jax.train import optimizers
from reducr_jax.train import selection_step
from reducr_jax.train import train_state
from reducr_jax.models.mlp import MLP

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10


# Models.


class SmallCNN(nn.Module):
  """Conv(3×3)+ReLU blocks with 2×2 average pooling between them, global mean, Dense.

  Attributes:
    features: channels of the conv layers.
    num_outputs: width of the final linear layer; ``None`` returns the pooled features
      (the trunk of a :class:`reducr_jax.core.stacked_experts.MultiHead`).
  """
  features: Sequence[int] = (8, 16, 32)
  num_outputs: Optional[int] = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x``: ``[B, H, W, 3]`` → ``[B, num_outputs]`` logits (or ``[B, F]`` features).

    ``train`` is accepted (as by the library's models, e.g. from
    :class:`reducr_jax.core.stacked_experts.MultiHead`) and ignored: no batch norm, no dropout.
    """
    del train
    x = x.astype(jnp.float32)
    for i, width in enumerate(self.features):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i < len(self.features) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.mean(axis=(1, 2))
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs)(x)
    return x


def make_model(name: str, cnn_features: Sequence[int],
               num_outputs: Optional[int] = NUM_CLASSES) -> tuple[nn.Module, tuple[int, ...]]:
  """``(model, example_shape)`` for ``"mlp"`` (2×256 on 40 features) or ``"cnn"``.

  Args:
    name: ``"mlp"`` or ``"cnn"``.
    cnn_features: the CNN's conv channels.
    num_outputs: width of the final layer; ``None`` gives the trunk (features only).
  """
  if name == "mlp":
    return MLP((256, 256), num_outputs), (40,)
  if name == "cnn":
    return SmallCNN(tuple(cnn_features), num_outputs), (32, 32, 3)
  raise ValueError(f"unknown model {name!r}")


# Timing.


def time_call(fn: Callable[[], Any], calls: int = 1) -> float:
  """Seconds per call of ``calls`` back-to-back calls of ``fn``, then ``block_until_ready``.

  ``fn`` may carry state between calls (e.g. a train step that feeds its new state to the
  next call): only the last call's output is waited for, which waits for all of them.
  """
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def round_robin(calls: dict[str, Callable[[], Any]], rounds: int,
                rng: Optional[np.random.Generator], calls_per_timing: int = 1
                ) -> dict[str, list[float]]:
  """Times every function once per round, interleaved so all see the same machine state.

  Args:
    calls: name → function of no arguments, compiled and warmed up already.
    rounds: timings per function.
    rng: shuffles the order afresh each round; ``None`` keeps the order of ``calls``.
    calls_per_timing: back-to-back calls per timing (see :func:`time_call`).

  Returns:
    name → ``rounds`` timings, in seconds per call.
  """
  names = list(calls)
  times: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(rounds):
    order = range(len(names)) if rng is None else rng.permutation(len(names))
    for i in order:
      times[names[i]].append(time_call(calls[names[i]], calls_per_timing))
  return times


def summarize(seconds: Sequence[float], count_key: str = "n") -> dict[str, Any]:
  """Median, quartiles and minimum in milliseconds, and the number of timings.

  Args:
    seconds: the timings.
    count_key: the key of the number of timings in the result.
  """
  ms = np.asarray(seconds) * 1e3
  return {"median_ms": float(np.median(ms)), "p25_ms": float(np.percentile(ms, 25)),
          "p75_ms": float(np.percentile(ms, 75)), "min_ms": float(ms.min()),
          count_key: len(ms)}


def ratios(seconds: Sequence[float], base: Sequence[float]) -> dict[str, float]:
  """``ratio`` (median / median) and ``ratio_of_mins`` (min / min) of timings to a baseline."""
  return {"ratio": float(np.median(seconds) / np.median(base)),
          "ratio_of_mins": float(np.min(seconds) / np.min(base))}


def flops(fn: Any, *args: Any) -> float:
  """FLOPs of the compiled ``fn(*args)`` from XLA's cost analysis (NaN if unavailable).

  ``fn`` is anything with ``.lower`` (``jax.jit`` or ``jax.pmap`` output); this lowers and
  compiles it for ``args``. JAX caches the executable, so a later ``fn(*args)`` with the
  same shapes does not compile again.
  """
  return compiled_flops(fn.lower(*args).compile())


def compiled_flops(compiled: Any) -> float:
  """FLOPs of a ``jax.stages.Compiled`` from XLA's cost analysis (NaN if unavailable).

  XLA counts the body of a loop (``lax.map``, ``lax.scan``, ``while``) once, not once per
  iteration, so time anything with such a loop against the FLOPs of a ``vmap`` form.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


MEMORY_FIELDS = device_memory.MEMORY_FIELDS
memory_stats = device_memory.compiled_memory   # {argument, output, alias, temp, …, peak}


def mib(num_bytes: float) -> str:
  """``1234567`` → ``"1.18"`` (MiB, two decimals)."""
  return f"{num_bytes / 2**20:.2f}"


# Train steps: the library's pmapped step on random inputs.

# Variant → (config.selection.method, reference losses, config.reweight).
STEP_VARIANTS = {
    "uniform": ("uniform", None, "none"),
    "train_loss": ("train_loss", None, "none"),
    "rho_loss (table)": ("rho_loss", "table", "none"),
    "reducr (table)": ("reducr", "table", "none"),
    "reducr (online experts)": ("reducr", "online", "none"),
    "reducr + group_dro (table)": ("reducr", "table", "group_dro"),
    "reducr + meta (table)": ("reducr", "table", "meta"),
}


class StepBench(NamedTuple):
  """A built train step and its inputs, ready to call as ``step(state, batch, ref)``.

  Attributes:
    step: the pmapped :func:`reducr_jax.train.selection_step.train_step`.
    state: replicated :class:`reducr_jax.train.train_state.TrainState`, leaves ``[n, ...]``.
    batch: the sharded large batch, leaves ``[n, B/n, ...]`` (``x``, ``y``, plus
      ``ref_losses [n, B/n, C']`` for table variants, ``meta_x``/``meta_y`` for meta).
    ref: replicated stacked expert variables (online variant, leading axes ``[n, C]``),
      else ``None``.
    cfg: the step's static :class:`reducr_jax.train.train_state.StepConfig`.
    fns, ref_loss_fn, tx, devices: what the step was built from (to build it another way,
      e.g. ``memory.py``'s ``jit(shard_map)`` form).
  """
  step: Callable
  state: Any
  batch: Any
  ref: Any
  cfg: train_state.StepConfig
  fns: models.ModelFns
  ref_loss_fn: Optional[Callable]
  tx: Any
  devices: tuple


def shard(tree: Any, devices: Sequence[Any]) -> Any:
  """Host arrays ``[B, ...]`` → device arrays ``[n, B/n, ...]``, row block d on device d.

  Placed on mesh axis ``selection_step.AXIS``, the sharding the pmapped step gives its outputs.
  """
  n = len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), (selection_step.AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(selection_step.AXIS))
  return jax.tree.map(
      lambda a: jax.device_put(np.reshape(a, (n, a.shape[0] // n) + a.shape[1:]), sharding),
      tree)


def random_inputs(rng: np.random.Generator, size: int, input_shape: Sequence[int],
                  dtype: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """``x [size, *input_shape]`` (uint8 images in [0, 255] or normal floats), ``y int32[size]``."""
  shape = (size,) + tuple(input_shape)
  if np.dtype(dtype) == np.uint8:
    x = rng.integers(0, 256, shape).astype(np.uint8)
  else:
    x = rng.normal(size=shape).astype(dtype)
  return x, rng.integers(0, num_classes, size).astype(np.int32)


def build_train_step(config: ml_collections.ConfigDict, variant: str,
                     input_shape: Sequence[int], input_dtype: Any = np.float32,
                     num_classes: int = NUM_CLASSES, *, num_devices: int = 1,
                     online_strategy: str = "vmap", donate: bool = True,
                     seed: int = 0) -> StepBench:
  """The library's train step for one variant of ``config``, as the trainer builds it.

  The model is ``models.model_fns(models.create_model(config.model, C), x0,
  axis_name=selection_step.AXIS, init_impl=models.init_rng_impl(config.model))``; the step is
  ``selection_step.make_train_step`` (state donated) or, with ``donate=False``, the same
  ``jax.pmap`` of ``selection_step.train_step`` without donation (to measure what donation saves).
  Inputs are random and placed on the devices once (a benchmark of the step, not of the
  host → device copy of the batch).

  Args:
    config: trainer config (``configs/*.py``); its ``batch_size`` is the global B, its
      ``selection.percent_selected`` gives k, ``dataset.augment`` the on-device augmentation.
    variant: a key of :data:`STEP_VARIANTS`.
    input_shape: one example's shape, e.g. ``(40,)`` or ``(32, 32, 3)``.
    input_dtype: ``float32`` features or ``uint8`` images.
    num_classes: C (one expert per class for REDUCR).
    num_devices: n, the first n local devices.
    online_strategy: :func:`reducr_jax.core.stacked_experts.expert_losses` strategy of the
      online variant.
    donate: build with :func:`reducr_jax.train.selection_step.make_train_step` (donates the state).
    seed: parameters and data.
  """
  if variant not in STEP_VARIANTS:
    raise ValueError(f"variant must be one of {list(STEP_VARIANTS)}, got {variant!r}")
  devices = jax.local_devices()[:num_devices]
  if len(devices) != num_devices:
    raise ValueError(f"num_devices must be at most {jax.local_device_count()} (the local "
                     f"devices), got {num_devices}")
  method, reference, reweight = STEP_VARIANTS[variant]
  config = config.copy_and_resolve_references()
  config.selection.method = method
  config.reweight = reweight
  x0 = np.zeros((1,) + tuple(input_shape), input_dtype)
  module = models.create_model(config.model, num_classes)
  init_impl = models.init_rng_impl(config.model)
  fns = models.model_fns(module, x0, axis_name=selection_step.AXIS, init_impl=init_impl)
  tx = optimizers.make_optimizer(config.optimizer)
  variables = _init_variables(fns, (config.model.to_json(), tuple(input_shape),
                                    np.dtype(input_dtype).str, num_classes, seed))

  rng = np.random.default_rng(seed)
  b = config.batch_size
  x, y = random_inputs(rng, b, input_shape, input_dtype, num_classes)
  batch = {"x": x, "y": y}
  if reference == "table":
    width = num_classes if method == "reducr" else 1
    batch["ref_losses"] = rng.uniform(0, 2, (b, width)).astype(np.float32)
  meta = None
  if reweight == "meta":
    vx, vy = random_inputs(rng, config.meta.val_batch_size, input_shape, input_dtype,
                           num_classes)
    meta = {"meta_x": vx, "meta_y": vy}

  ref_loss_fn, ref = None, None
  if reference == "online":
    # Evaluation-mode experts (running batch-norm statistics), as references builds them.
    ref_fns = models.model_fns(module, x0, init_impl=init_impl)
    ref_loss_fn = functools.partial(stacked_experts.expert_losses, ref_fns.apply,
                                    strategy=online_strategy)
    stacked = stacked_experts.init_stacked(ref_fns.init, jax.random.PRNGKey(seed + 2), num_classes)
    ref = replicate(models.variables(*stacked), devices)
  cfg = train_state.StepConfig.from_config(config, num_classes, num_devices, reference,
                                     (1,) * num_classes)
  state = train_state.init_state(None, lambda _: jax.tree.map(jnp.asarray, variables), tx,
                           cfg, jax.random.PRNGKey(seed + 1))
  if donate:
    step = selection_step.make_train_step(fns, ref_loss_fn, tx, cfg, devices)
  else:
    step = jax.pmap(functools.partial(selection_step.train_step, model=fns, ref_loss_fn=ref_loss_fn,
                                      tx=tx, cfg=cfg), axis_name=selection_step.AXIS, devices=devices)
  p_batch = shard(batch, devices)
  if meta is not None:
    p_batch.update(shard(meta, devices))
  return StepBench(step, replicate(state, devices), p_batch, ref, cfg, fns, ref_loss_fn,
                   tx, tuple(devices))


def replicate(tree: Any, devices: Sequence[Any]) -> Any:
  """``tree`` stacked once per device, leaves ``[n, ...]``, on mesh axis ``selection_step.AXIS``.

  ``flax.jax_utils.replicate``'s default mesh axis name differs from the one the pmapped
  step gives its outputs, and JAX keys its compile cache on input shardings: a state
  placed that way makes the second step compile the step again.
  """
  return flax.jax_utils.replicate(tree, devices, axis_name=selection_step.AXIS)


_INIT_CACHE: dict[tuple, Any] = {}


def _init_variables(fns: models.ModelFns, key: tuple) -> Any:
  """``fns.init(PRNGKey(seed))`` as host arrays, computed once per ``key`` (model config,
  input shape and dtype, C, seed): the variants of one model start from the same weights
  without compiling the initialiser again."""
  if key not in _INIT_CACHE:
    out = jax.jit(fns.init)(jax.random.PRNGKey(key[-1]))
    _INIT_CACHE[key] = jax.tree.map(np.asarray, out)
  return _INIT_CACHE[key]


def stepper(bench: StepBench) -> Callable[[], Any]:
  """A function of no arguments that runs one step from the state the last call left.

  Returns ``(state, metrics)``, so waiting for it waits for the whole step. (The state is
  donated: the one in ``bench`` is consumed by the first call.)
  """
  state = bench.state

  def call():
    nonlocal state
    state, metrics = bench.step(state, bench.batch, bench.ref)
    return state, metrics

  return call


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
  """Least-squares ``y ≈ intercept + slope · x`` and its R²."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  slope, intercept = np.polyfit(x, y, 1)
  pred = intercept + slope * x
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
  return {"intercept": float(intercept), "slope": float(slope), "r2": r2}


# The machine.


def _version(package: str) -> Optional[str]:
  """Installed version of ``package``, or ``None``."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def loadavg() -> Optional[list[float]]:
  """1-, 5- and 15-minute load averages (other processes competing for the cores)."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
  """Date, versions, backend, device, CPU counts and load average for a results file.

  Call it when the benchmark starts (it starts the JAX backend: set ``XLA_FLAGS`` first),
  and :func:`finish_info` when it ends.

  Args:
    packages: versions to record besides jax, jaxlib, flax and numpy (e.g. ``"optax"``).
  """
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__,
      **{p: _version(p) for p in ("jaxlib", "flax", "numpy", *packages)},
      "python": platform.python_version(), "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "cpu_count": os.cpu_count(), "cpu_usable": usable, "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg_start": loadavg(),
  }


def finish_info(info: dict[str, Any], start: float) -> None:
  """Adds ``total_s`` (since ``start``, a ``time.perf_counter()``) and ``loadavg_end``."""
  info["total_s"] = time.perf_counter() - start
  info["loadavg_end"] = loadavg()


def machine_line(info: dict[str, Any], packages: Sequence[str] = ("flax",)) -> str:
  """``Machine: backend …, device …, N usable CPU cores …, jax …, <packages>; <date>.``"""
  versions = "".join(f", {p} {info[p]}" for p in packages)
  return (f"Machine: backend `{info['backend']}`, device `{info['device_kind']}`, "
          f"{info['cpu_usable']} usable CPU cores (of {info['cpu_count']}), "
          f"jax {info['jax']}{versions}; {info['date']}.")


def load_line(info: dict[str, Any]) -> str:
  """The load averages at start and end and the total time (after :func:`finish_info`)."""
  return (f"load average (1/5/15 min) {info['loadavg_start']} at start, "
          f"{info['loadavg_end']} at end; total {info['total_s']:.0f} s.")


# Flags and output.


def argument_parser(doc: str) -> argparse.ArgumentParser:
  """A parser described by the first paragraph of ``doc`` whose ``--help`` shows defaults."""
  return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_model_flags(parser: argparse.ArgumentParser, models: str) -> None:
  """``--models`` (default ``models``) and ``--cnn_features``, parsed into lists."""
  parser.add_argument("--models", type=comma_list, default=models,
                      help="comma-separated: mlp, cnn")
  parser.add_argument("--cnn_features", type=int_list, default="8,16,32",
                      help="CNN conv channels")


def add_out_flag(parser: argparse.ArgumentParser, default: str) -> None:
  """``--out``, the results JSON; ``default`` says what ``None`` means (see write_results)."""
  parser.add_argument("--out", default=None,
                      help=f"results JSON (default {default}); the markdown table goes next "
                           "to it with suffix .md")


def comma_list(text: str) -> list[str]:
  """``"a, b,"`` → ``["a", "b"]`` (an argparse ``type``)."""
  return [item.strip() for item in text.split(",") if item.strip()]


def int_list(text: str) -> list[int]:
  """``"8,16,32"`` → ``[8, 16, 32]`` (an argparse ``type``)."""
  return [int(item) for item in comma_list(text)]


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
  """The flags to record with the results (all but ``--out``)."""
  return {k: v for k, v in vars(args).items() if k != "out"}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str = "") -> list[str]:
  """Lines of a markdown table; ``align`` holds one ``l``/``r`` per column (default: l)."""
  align = align or "l" * len(header)
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  return (["| " + " | ".join(header) + " |", rule]
          + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def run_python(argv: Sequence[str], env: Optional[dict[str, str]] = None,
               timeout: Optional[float] = None) -> subprocess.CompletedProcess:
  """Runs ``python <argv>`` with this interpreter from the repository root.

  Args:
    argv: script path (relative to the repository root) and flags.
    env: variables set on top of this process's environment (e.g. ``XLA_FLAGS``, which
      JAX reads once, when its backend starts: a new device count needs a new process).
    timeout: seconds before the child is killed (``subprocess.TimeoutExpired``).

  Returns:
    the finished process, stdout and stderr captured as text.
  """
  root = RESULTS_DIR.parent.parent
  full_env = {**os.environ, **(env or {})}
  full_env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(root), full_env.get("PYTHONPATH", "")) if p)
  return subprocess.run([sys.executable, *argv], cwd=root, env=full_env, text=True,
                        capture_output=True, timeout=timeout, check=False)


def write_results(out: Optional[str], stem: str, payload: dict[str, Any],
                  table: str) -> pathlib.Path:
  """Prints ``table``, writes it as markdown and ``payload`` as JSON; returns the JSON path.

  Args:
    out: the JSON path, or ``None`` for ``benchmarks/results/<stem>.json``.
    stem: the default file name without suffix, e.g. ``"experts_cpu"``.
    payload: the JSON content.
    table: the markdown, written to the JSON path with suffix ``.md``.
  """
  print(table)
  path = pathlib.Path(out) if out else RESULTS_DIR / f"{stem}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2) + "\n")
  path.with_suffix(".md").write_text(table)
  print(f"wrote {path} and {path.with_suffix('.md')}")
  return path
