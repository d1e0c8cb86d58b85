"""What the benchmark scripts share: models, interleaved timing, FLOPs, machine info, output.

The scripts in this folder import it as ``import harness``: run as
``python benchmarks/<name>.py``, a script's own folder is the first entry of ``sys.path``.

  * :class:`SmallCNN` and :func:`make_model` — the benchmark models (an MLP 2×256 on 40
    features, a small CNN on 32×32×3);
  * :func:`time_call`, :func:`round_robin`, :func:`summarize`, :func:`ratios` — timing:
    every variant compiled and warmed up by the caller first, then timed in interleaved
    rounds, each timing ending in ``block_until_ready``, and summarised as medians,
    quartiles and minima;
  * :func:`flops` — FLOPs of a compiled function from XLA's cost analysis;
  * :func:`machine_info`, :func:`finish_info`, :func:`machine_line`, :func:`load_line` —
    what ran the benchmark (versions, backend, device, cores, load average, date);
  * :func:`argument_parser`, :func:`add_model_flags`, :func:`add_out_flag`,
    :func:`flag_values`, :func:`write_results` — the shared flags, and the output
    ``benchmarks/results/<name>_<backend>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.models.mlp import MLP

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10


# Models.


class SmallCNN(nn.Module):
  """Conv(3×3)+ReLU blocks with 2×2 average pooling between them, global mean, Dense.

  Attributes:
    features: channels of the conv layers.
    num_outputs: width of the final linear layer; ``None`` returns the pooled features
      (the trunk of a :class:`reducr_jax.experts.MultiHead`).
  """
  features: Sequence[int] = (8, 16, 32)
  num_outputs: Optional[int] = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``x``: ``[B, H, W, 3]`` → ``[B, num_outputs]`` logits (or ``[B, F]`` features)."""
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
  compiles it for ``args``.
  """
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


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
