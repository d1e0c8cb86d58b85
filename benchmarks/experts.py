"""Speed of the ways to get the ``[B, C]`` expert-loss matrix, as ratios to one forward.

For each model family (an MLP on MNIST-1D-like 40-feature inputs and a small CNN on
32×32×3 inputs) and each number of experts C, this times, side by side in one process:

  * ``forward``     — the baseline: one model's forward pass + cross-entropy → ``[B]``;
  * ``vmap``, ``map``, ``loop`` — :func:`reducr_jax.core.stacked_experts.expert_losses` with that
    strategy: C stacked models on the batch → ``[B, C]``;
  * ``precomputed`` — the per-step cost of the table strategy: gathering the batch's B
    rows of a precomputed ``[N, C]`` table by index inside ``jit``;
  * ``multihead``   — one :class:`reducr_jax.core.stacked_experts.MultiHead` forward (shared trunk,
    C heads) → ``[B, C]`` losses;
  * ``table build`` — the one-off :func:`reducr_jax.train.references.loss_table_rows` pass over N
    examples (with the fastest online strategy), as a ratio to one model's forward over
    the same N examples with the same batching.

Every function is jitted and compiled (warmed up) first; then the strategies run in
round-robin, in a shuffled order each round, each call followed by
``block_until_ready``. The product is the ratio ``median(strategy) / median(forward)``
from the same rounds; absolute milliseconds are printed only for context (they depend on
the machine and its load). Outputs are checked to agree across strategies.

Run (about 1–2 minutes on 2 CPU cores)::

  python benchmarks/experts.py --all

Writes ``benchmarks/results/experts_<backend>.json`` and ``.md`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/experts.py``
from reducr_jax.core import class_weighted_losses
from reducr_jax.train import references
from reducr_jax.core import stacked_experts

ONLINE = stacked_experts.STRATEGIES  # ("vmap", "map", "loop")
ORDER = ("forward",) + ONLINE + ("precomputed", "multihead")
NUM_CLASSES = harness.NUM_CLASSES
FOOTNOTE = (  # below the markdown table
    "ratio = median(strategy) / median(forward) over the same interleaved rounds; ratio of "
    "minima = min / min; table build: one-off pass over N examples / one model's forward "
    "over the same N. 1st call = compile + one run.")
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def bench_config(model_name: str, num_experts: int, args: argparse.Namespace,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
  """All strategies for one model family and one C → result rows."""
  b, n = args.batch_size, args.table_size
  model, shape = harness.make_model(model_name, args.cnn_features)
  trunk, _ = harness.make_model(model_name, args.cnn_features, num_outputs=None)
  key = jax.random.key(args.seed)
  k_x, k_y, k_p, k_mh, k_i = jax.random.split(key, 5)

  # A dataset of N examples; the benchmark batch is B of its rows, so gathered table rows
  # must equal the online losses on the batch.
  data_x = jax.random.normal(k_x, (n,) + shape, jnp.float32)
  data_y = jax.random.randint(k_y, (n,), 0, NUM_CLASSES, jnp.int32)
  idx = jax.random.choice(k_i, n, (b,), replace=False).astype(jnp.int32)
  x, y = data_x[idx], data_y[idx]

  apply_fn = lambda p, xb: model.apply({"params": p}, xb)  # noqa: E731
  stacked = stacked_experts.init_stacked(lambda r: model.init(r, x[:1])["params"], k_p, num_experts)
  single = jax.tree.map(lambda a: a[0], stacked)
  mh_model = stacked_experts.MultiHead(trunk, num_experts, NUM_CLASSES)
  mh_params = mh_model.init(k_mh, x[:1])["params"]

  forward = jax.jit(lambda p, xb, yb: class_weighted_losses.cross_entropy(apply_fn(p, xb), yb))
  online = {s: jax.jit(functools.partial(stacked_experts.expert_losses, apply_fn, strategy=s))
            for s in ONLINE}
  gather = jax.jit(lambda table, i: table[i])
  multihead = jax.jit(lambda p, xb, yb: class_weighted_losses.multihead_expert_losses(
      mh_model.apply({"params": p}, xb), yb))

  calls: dict[str, Callable[[], Any]] = {
      "forward": lambda: forward(single, x, y),
      **{s: functools.partial(online[s], stacked, x, y) for s in ONLINE},
      "multihead": lambda: multihead(mh_params, x, y),
  }
  first_s = {name: harness.time_call(fn) for name, fn in calls.items()}  # compile + one run

  # The [N, C] table. precompute_table calls the jitted online function on [B, ...]
  # batches, so it reuses that strategy's compiled program.
  np_x, np_y = np.asarray(data_x), np.asarray(data_y)
  build_with = lambda s: references.loss_table_rows(  # noqa: E731
      lambda xb, yb: online[s](stacked, xb, yb), np_x, np_y, batch_size=b)
  one_pass = lambda: references.loss_table_rows(  # noqa: E731
      lambda xb, yb: forward(single, xb, yb)[:, None], np_x, np_y, batch_size=b)
  table = jnp.asarray(build_with("map"))
  one_pass()  # compiles its eager [:, None]
  calls["precomputed"] = lambda: gather(table, idx)
  first_s["precomputed"] = harness.time_call(calls["precomputed"])
  for fn in calls.values():  # one more warm call each, after all compiles
    harness.time_call(fn)

  # Agreement: every [B, C] route gives the same losses (multihead has its own params).
  ref = np.asarray(calls["loop"]())
  max_diff = {name: float(np.abs(np.asarray(calls[name]()) - ref).max())
              for name in ONLINE + ("precomputed",)}
  assert np.asarray(calls["multihead"]()).shape == (b, num_experts)
  for name, diff in max_diff.items():
    if diff > 1e-3:
      raise AssertionError(f"{model_name} C={num_experts}: {name} differs from loop by {diff}")

  times = harness.round_robin(calls, args.rounds, rng)
  # The one-off build is timed with the online strategy that was fastest above.
  build_strategy = min(ONLINE, key=lambda s: np.median(times[s]))
  build_times = harness.round_robin(
      {"build": functools.partial(build_with, build_strategy), "one_pass": one_pass},
      args.build_rounds, rng)

  base = np.median(times["forward"])
  rows = []
  for name in ORDER:
    rows.append({
        "model": model_name, "strategy": name, "num_experts": num_experts,
        "batch_size": b, **harness.summarize(times[name]),
        **harness.ratios(times[name], times["forward"]),
        "ratio_p25_p75": [float(np.percentile(times[name], 25) / base),
                          float(np.percentile(times[name], 75) / base)],
        "first_call_s": first_s[name], "max_abs_diff_vs_loop": max_diff.get(name),
    })
  rows.append({
      "model": model_name, "strategy": "table build", "num_experts": num_experts,
      "batch_size": b, "table_size": n, "build_strategy": build_strategy,
      **harness.summarize(build_times["build"]),
      "one_pass_ms": harness.summarize(build_times["one_pass"])["median_ms"],
      **harness.ratios(build_times["build"], build_times["one_pass"]),
      "ratio_baseline": f"one model's forward over the same N={n} examples",
  })
  return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
  """The results as a markdown table with the machine above it."""
  lines = [
      harness.machine_line(info),
      f"B = {args.batch_size}, {args.rounds} interleaved rounds (table build: "
      f"{args.build_rounds}, N = {args.table_size}); CNN features "
      f"{tuple(args.cnn_features)}; XLA_FLAGS={info['xla_flags']!r}; "
      + harness.load_line(info),
      "",
      "| model | strategy | C | ms (median) | ratio to one forward | ratio of minima "
      "| 1st call s |",
      "|---|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    strategy = r["strategy"]
    if strategy == "table build":
      strategy = (f"table build (one-off, N={r['table_size']}, {r['build_strategy']}; "
                  "ratio to one forward over N)")
      first = ""
    else:
      first = f"{r['first_call_s']:.2f}"
    lines.append(f"| {r['model']} | {strategy} | {r['num_experts']} | "
                 f"{r['median_ms']:.3f} | {r['ratio']:.2f} | {r['ratio_of_mins']:.2f} | "
                 f"{first} |")
  lines += ["", FOOTNOTE]
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  p.add_argument("--num_experts", type=int, default=10, help="C")
  p.add_argument("--all", action="store_true", help="also run C = 14")
  p.add_argument("--batch_size", type=int, default=320, help="B")
  p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
  p.add_argument("--build_rounds", type=int, default=3,
                 help="interleaved rounds of the table build and its one-pass baseline")
  p.add_argument("--table_size", type=int, default=None,
                 help="N, examples in the precomputed table (None: 4·B)")
  harness.add_model_flags(p, models="mlp,cnn")
  p.add_argument("--single_thread", action="store_true",
                 help="run XLA:CPU on one thread (sets XLA_FLAGS before the backend starts)")
  p.add_argument("--seed", type=int, default=0)
  harness.add_out_flag(p, "benchmarks/results/experts_<backend>.json, "
                          "experts_<backend>_1thread.json with --single_thread")
  args = p.parse_args(argv)
  args.table_size = args.table_size or 4 * args.batch_size
  if args.table_size < args.batch_size:
    p.error("--table_size must be at least --batch_size")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs every (model, C) configuration, prints and writes the results."""
  args = parse_args(argv)
  if args.single_thread:  # read when the CPU client is created, i.e. on first use below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
  info = harness.machine_info()
  cs = [args.num_experts] + ([14] if args.all and args.num_experts != 14 else [])
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  rows = []
  for model_name in args.models:
    for c in cs:
      t0 = time.perf_counter()
      rows.extend(bench_config(model_name, c, args, rng))
      print(f"# {model_name} C={c}: {time.perf_counter() - t0:.1f}s", flush=True)
  harness.finish_info(info, start)

  table = markdown(rows, info, args)
  stem = f"experts_{info['backend']}" + ("_1thread" if args.single_thread else "")
  harness.write_results(args.out, stem,
                        {"machine": info, "flags": harness.flag_values(args), "results": rows},
                        table)


if __name__ == "__main__":
  main()
