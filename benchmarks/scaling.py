"""How the train step's time grows with the batch size B, the number of classes C, and devices.

All on the MLP of ``configs/default.py`` (256-256, float32 ``[B, 40]`` inputs), with the
library's own step (``harness.build_train_step``: ``reducr_jax.train.selection_step.make_train_step``,
device-resident inputs), each part timed in shuffled interleaved rounds:

  * **B**: ``uniform`` and ``reducr (table)`` at B = 80 … 1280, k = 10 % of B, C = 10. A
    least-squares line ``ms = a + b·B`` per variant: ``b`` is the cost per example (the
    forward on B, the gathers and the top-k for REDUCR; the forward/backward on k = B/10
    for both), ``a`` the fixed cost of a step (dispatch, optimizer update, small kernels).
  * **C**: ``uniform``, ``reducr (table)`` (its ``[B, C]`` part is the scoring, top-k and
    MWU update only) and ``reducr (online experts)`` (C expert MLPs with ``vmap``) at
    C = 2 … 20, B = 320; plus the ``[B, C]`` scoring + top-k + MWU update alone, jitted
    (``scoring``), to show that part is negligible. A line ``ms = a + b·C`` for the online
    step: ``b`` ≈ one expert forward on B.
  * **devices**: ``uniform`` and ``reducr (table)`` on n = 1, 2, 4, 8 devices with the
    global B = 320 and k = 32 fixed (strong scaling: each device gets B/n and k/n). Each n
    runs in its own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=n``
    (read once, when JAX starts). On a CPU host the n "devices" share the same cores, so
    this measures the overhead of splitting the step (collectives: ``all_gather`` of the
    losses, ``psum_scatter`` of the selected rows, ``psum`` of the gradients), not a
    speed-up; on n real accelerators the per-device work would shrink ~n×.

  python benchmarks/scaling.py [--parts=b,c,devices]

Writes ``benchmarks/results/scaling_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/scaling.py``
from reducr_jax.config import configuration
from reducr_jax.core import mwu
from reducr_jax.core import selection
from reducr_jax.core import selection_scores

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "..", "configs", "default.py")
PARTS = ("b", "c", "devices")
INPUT_SHAPE = (40,)
WORKER_TAG = "SCALING_RESULT "


def load_config(args: argparse.Namespace, batch_size: int):
  """The MLP config at global batch size ``batch_size`` (k = 10 %)."""
  config = configuration.load_config(args.config)
  config.batch_size = batch_size
  config.selection.percent_selected = 0.1
  return config


def time_variants(config, variants: Sequence[str], num_classes: int, num_devices: int,
                  rounds: int, steps: int, rng: np.random.Generator) -> dict[str, list[float]]:
  """Builds, compiles and times the train step of each variant side by side."""
  calls = {}
  for v in variants:
    bench = harness.build_train_step(config, v, INPUT_SHAPE, np.float32, num_classes,
                                     num_devices=num_devices, online_strategy="vmap")
    calls[v] = harness.stepper(bench)
    harness.time_call(calls[v], 2)                       # compile + warm up
  return harness.round_robin(calls, rounds, rng, steps)


def scoring_fn(k: int, eta: float):
  """The ``[B, C]`` part of a REDUCR step alone: reducible losses, class-weighted scores,
  top-k, class objective and MWU update (what ``reducr_jax.train.selection_step.train_step`` does between the
  forward on B and the update on k)."""

  def fn(model_loss, expert, log_w, h):
    reducible = selection_scores.reducible_losses(model_loss, expert, clip=True, use_expert=True,
                                           use_model_loss=True)
    scores = selection_scores.weighted_scores(reducible, mwu.weights(log_w))
    sel = selection.top_k(scores, k)
    alpha = mwu.class_objective(reducible[sel], h, True)
    return mwu.update(log_w, alpha, eta), sel

  return jax.jit(fn)


def part_b(args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
  """Step time vs B."""
  rows = []
  for b in args.batch_sizes:
    config = load_config(args, b)
    times = time_variants(config, ("uniform", "reducr (table)"), 10, 1, args.rounds,
                          args.steps, rng)
    for v, t in times.items():
      rows.append({"part": "b", "variant": v, "batch_size": b,
                   "k": configuration.num_selected(config), "num_classes": 10,
                   "num_devices": 1, **harness.summarize(t)})
    print(f"# B={b}: " + ", ".join(f"{v} {1e3 * np.median(t):.3f} ms"
                                   for v, t in times.items()), flush=True)
  return rows


def part_c(args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
  """Step time vs C, and the [B, C] scoring/MWU part alone."""
  rows = []
  config = load_config(args, args.c_batch_size)
  k = configuration.num_selected(config)
  for c in args.num_classes:
    times = time_variants(config, ("uniform", "reducr (table)", "reducr (online experts)"),
                          c, 1, args.rounds, args.steps, rng)
    data = np.random.default_rng(c)
    b = config.batch_size
    operands = (jnp.asarray(data.uniform(0, 3, b), jnp.float32),
                jnp.asarray(data.uniform(0, 2, (b, c)), jnp.float32),
                mwu.init(c), jnp.asarray(data.uniform(0, 1, c), jnp.float32))
    fn = scoring_fn(k, float(config.selection.eta))
    call = functools.partial(fn, *operands)
    harness.time_call(call, 2)
    times["scoring"] = harness.round_robin({"scoring": call}, args.rounds, None,
                                           args.steps)["scoring"]
    for v, t in times.items():
      rows.append({"part": "c", "variant": v, "batch_size": b, "k": k, "num_classes": c,
                   "num_devices": 1, **harness.summarize(t)})
    print(f"# C={c}: " + ", ".join(f"{v} {1e3 * np.median(t):.3f} ms"
                                   for v, t in times.items()), flush=True)
  return rows


def worker(args: argparse.Namespace) -> None:
  """One device count (this process was started with that many host devices)."""
  n = args.worker_devices
  if jax.local_device_count() < n:
    raise SystemExit(f"worker: {jax.local_device_count()} devices, wanted {n}; set XLA_FLAGS")
  config = load_config(args, args.devices_batch_size)
  times = time_variants(config, ("uniform", "reducr (table)"), 10, n, args.rounds,
                        args.steps, np.random.default_rng(n))
  rows = [{"part": "devices", "variant": v, "batch_size": config.batch_size,
           "k": configuration.num_selected(config), "num_classes": 10, "num_devices": n,
           **harness.summarize(t)} for v, t in times.items()]
  print(WORKER_TAG + json.dumps(rows), flush=True)


def part_devices(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Step time vs the number of (fake CPU) devices, one child process per count."""
  rows = []
  for n in args.devices:
    flags = f"--xla_force_host_platform_device_count={n}"
    argv = [os.path.relpath(os.path.abspath(__file__), harness.RESULTS_DIR.parent.parent),
            "--worker_devices", str(n), "--rounds", str(args.rounds), "--steps",
            str(args.steps), "--devices_batch_size", str(args.devices_batch_size),
            "--config", args.config]
    proc = harness.run_python(argv, env={"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                              timeout=args.worker_timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(WORKER_TAG)]
    if proc.returncode or not lines:
      raise RuntimeError(f"scaling worker for {n} devices failed (exit {proc.returncode}):\n"
                         + proc.stderr[-3000:])
    got = json.loads(lines[-1][len(WORKER_TAG):])
    rows += got
    print(f"# n={n}: " + ", ".join(f"{r['variant']} {r['median_ms']:.3f} ms" for r in got),
          flush=True)
  return rows


def fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Least-squares lines of median ms against B (part b) and against C (part c)."""
  out = []
  for part, key in (("b", "batch_size"), ("c", "num_classes")):
    for v in dict.fromkeys(r["variant"] for r in rows if r["part"] == part):
      sel = [r for r in rows if r["part"] == part and r["variant"] == v]
      if len(sel) >= 2:
        out.append({"part": part, "variant": v, "x": key,
                    **harness.fit_line([r[key] for r in sel], [r["median_ms"] for r in sel])})
  return out


def markdown(rows: list[dict[str, Any]], lines_fit: list[dict[str, Any]],
             info: dict[str, Any], args: argparse.Namespace) -> str:
  """One table per part, the fitted lines below each."""
  lines = [harness.machine_line(info, ("flax", "optax")), harness.load_line(info),
           f"MLP (256, 256) on float32 [B, 40] (configs/default.py); {args.rounds} shuffled "
           f"interleaved rounds of {args.steps} steps per point; k = 10 % of B.", ""]
  by = lambda part: [r for r in rows if r["part"] == part]  # noqa: E731
  med = {(r["part"], r["variant"], r["batch_size"], r["num_classes"], r["num_devices"]):
         r["median_ms"] for r in rows}

  def fit_lines(part, unit):
    for f in lines_fit:
      if f["part"] == part:
        lines.append(f"- {f['variant']}: ms ≈ {f['intercept']:.3f} + {f['slope']:.5f}·{unit} "
                     f"(R² = {f['r2']:.3f})")

  if by("b"):
    lines += ["### Step time vs B (C = 10, one device)", ""]
    table = []
    for b in dict.fromkeys(r["batch_size"] for r in by("b")):
      u, r = med[("b", "uniform", b, 10, 1)], med[("b", "reducr (table)", b, 10, 1)]
      table.append([b, b // 10, f"{u:.3f}", f"{r:.3f}", f"{r / u:.2f}",
                    f"{1e3 * (r - u) / b:.2f}"])
    lines += harness.markdown_table(
        ["B", "k", "uniform ms", "reducr (table) ms", "ratio", "REDUCR extra µs / example"],
        table, "rrrrrr")
    lines.append("")
    fit_lines("b", "B")
    lines.append("")
  if by("c"):
    lines += ["### Step time vs C (B = 320, one device)", ""]
    table = []
    for c in dict.fromkeys(r["num_classes"] for r in by("c")):
      b = next(r["batch_size"] for r in by("c"))
      g = lambda v: med[("c", v, b, c, 1)]  # noqa: E731
      table.append([c, f"{g('uniform'):.3f}", f"{g('reducr (table)'):.3f}",
                    f"{g('reducr (online experts)'):.3f}", f"{g('scoring'):.3f}",
                    f"{g('scoring') / g('reducr (table)'):.1%}"])
    lines += harness.markdown_table(
        ["C", "uniform ms", "reducr (table) ms", "reducr (online, vmap) ms",
         "scoring + top-k + MWU alone ms", "scoring / reducr (table)"], table, "rrrrrr")
    lines.append("")
    fit_lines("c", "C")
    lines.append("")
  if by("devices"):
    lines += ["### Step time vs devices (strong scaling: global B = "
              f"{args.devices_batch_size}, k = {args.devices_batch_size // 10} fixed; fake "
              f"CPU devices sharing {info['cpu_usable']} cores)", ""]
    table = []
    ns = list(dict.fromkeys(r["num_devices"] for r in by("devices")))
    b = args.devices_batch_size
    for n in ns:
      u, r = med[("devices", "uniform", b, 10, n)], med[("devices", "reducr (table)", b, 10, n)]
      u1, r1 = med[("devices", "uniform", b, 10, ns[0])], med[("devices", "reducr (table)", b,
                                                                   10, ns[0])]
      table.append([n, b // n, f"{u:.3f}", f"{r:.3f}", f"{r / u:.2f}", f"{u / u1:.2f}",
                    f"{r / r1:.2f}"])
    lines += harness.markdown_table(
        ["devices n", "B per device", "uniform ms", "reducr (table) ms", "ratio",
         f"uniform ÷ n={ns[0]}", f"reducr ÷ n={ns[0]}"], table, "rrrrrrr")
    lines.append("")
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  p.add_argument("--parts", type=harness.comma_list, default=",".join(PARTS),
                 help=f"comma-separated among {', '.join(PARTS)}")
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--batch_sizes", type=harness.int_list, default="80,160,320,640,1280")
  p.add_argument("--num_classes", type=harness.int_list, default="2,5,10,20", help="C")
  p.add_argument("--c_batch_size", type=int, default=320, help="B of the C part")
  p.add_argument("--devices", type=harness.int_list, default="1,2,4,8")
  p.add_argument("--devices_batch_size", type=int, default=320,
                 help="global B of the devices part")
  p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per point")
  p.add_argument("--steps", type=int, default=5, help="steps per timing")
  p.add_argument("--worker_timeout", type=float, default=300.0)
  p.add_argument("--worker_devices", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--seed", type=int, default=0)
  harness.add_out_flag(p, "benchmarks/results/scaling_<backend>.json")
  args = p.parse_args(argv)
  for part in args.parts:
    if part not in PARTS:
      p.error(f"--parts entries must be among {list(PARTS)}, got {part!r}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs the parts, prints and writes the results."""
  args = parse_args(argv)
  if args.worker_devices:
    worker(args)
    return
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  rng = np.random.default_rng(args.seed)
  rows = []
  if "b" in args.parts:
    rows += part_b(args, rng)
  if "c" in args.parts:
    rows += part_c(args, rng)
  if "devices" in args.parts:
    rows += part_devices(args)
  harness.finish_info(info, start)
  lines_fit = fits(rows)
  harness.write_results(args.out, f"scaling_{info['backend']}",
                        {"meta": {**info, "flags": harness.flag_values(args)}, "rows": rows,
                         "fits": lines_fit}, markdown(rows, lines_fit, info, args))


if __name__ == "__main__":
  main()
