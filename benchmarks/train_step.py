"""REDUCR train step vs uniform train step: measured time ratio vs FLOP-predicted ratio.

Every variant is the library's own step (``reducr_jax.train.selection_step.make_train_step``, ``pmap`` over
one device, state donated) built as the trainer builds it (``harness.build_train_step``),
timed side by side in one process on the same random, device-resident large batch
(interleaved rounds in a shuffled order, each timing ``block_until_ready``, medians). The
predicted ratio is ``flops(variant) / flops(uniform)`` from XLA's cost analysis of the
compiled steps, i.e. (forward on B [+ C expert forwards on B] + forward and backward on k)
/ (forward and backward on k); the target is measured / predicted ≤ 1.15.

Models (``--model``, comma-separated; ``--all``: both, and every variant):

  * ``mlp``: ``configs/default.py`` (MLP 256-256, B = 320, k = 32, C = 10) on float32
    ``[B, 40]`` features;
  * ``resnet``: ``configs/cifar10.py`` (ResNet-18, CIFAR stem, ``dataset.augment =
    "crop_flip"`` on device, uint8 ``[B, 32, 32, 3]`` images) shrunk to fit 2 CPU cores:
    width 8 (64 in the paper), one BasicBlock per stage (two), B = 160 (320), k = 16
    (``--resnet_width``, ``--resnet_stages``, ``--resnet_batch``): a REDUCR step takes
    ≈ 0.1 s, the online-experts step ≈ 0.7 s.

Variants (``harness.STEP_VARIANTS``): uniform, train_loss, rho_loss (table), reducr (table),
reducr (online experts), and with ``--all`` reducr + group_dro and reducr + meta (both with
the table). Online experts are timed with ``--online_strategy`` (``auto``: ``vmap`` for the
MLP, :func:`reducr_jax.core.stacked_experts.default_strategy` for the ResNet, i.e. ``lax.map`` on CPU)
but their FLOPs are always those of the ``vmap`` build: XLA's cost analysis counts a
``lax.map`` body once, not C times.

  python benchmarks/train_step.py [--model=mlp] [--all] [--rounds=30]

Writes ``benchmarks/results/train_step_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/train_step.py``
from reducr_jax.config import configuration
from reducr_jax.core import stacked_experts

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
MODELS = ("mlp", "resnet")
BASE_VARIANTS = ("uniform", "train_loss", "rho_loss (table)", "reducr (table)",
                 "reducr (online experts)")
EXTRA_VARIANTS = ("reducr + group_dro (table)", "reducr + meta (table)")
TARGET = 1.15  # measured / predicted


def model_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """Config, input shape/dtype, timed online strategy and timing schedule of one model."""
  if name == "mlp":
    config = configuration.load_config(args.config or os.path.join(CONFIGS, "default.py"))
    return {"config": config, "input_shape": (args.input_dim,), "input_dtype": np.float32,
            "online_strategy": "vmap" if args.online_strategy == "auto"
                               else args.online_strategy,
            "rounds": args.rounds, "steps_per_round": args.steps_per_round}
  if name == "resnet":
    config = configuration.load_config(os.path.join(CONFIGS, "cifar10.py"))
    config.model.width = args.resnet_width
    config.model.stage_sizes = tuple(args.resnet_stages)
    config.batch_size = args.resnet_batch
    strategy = (stacked_experts.default_strategy() if args.online_strategy == "auto"
                else args.online_strategy)
    return {"config": config, "input_shape": (32, 32, 3), "input_dtype": np.uint8,
            "online_strategy": strategy, "rounds": args.resnet_rounds, "steps_per_round": 1}
  raise ValueError(f"--model entries must be among {list(MODELS)}, got {name!r}")


def bench_model(name: str, variants: Sequence[str], args: argparse.Namespace,
                rng: np.random.Generator) -> list[dict[str, Any]]:
  """Builds, compiles and times every variant of one model → result rows."""
  setup = model_setup(name, args)
  config = setup["config"]
  build = lambda v, strategy, **kw: harness.build_train_step(  # noqa: E731
      config, v, setup["input_shape"], setup["input_dtype"], harness.NUM_CLASSES,
      online_strategy=strategy, **kw)
  calls, flops, info = {}, {}, {}
  for v in variants:
    bench = build(v, setup["online_strategy"])
    t0 = time.perf_counter()
    compiled = bench.step.lower(bench.state, bench.batch, bench.ref).compile()
    compile_s = time.perf_counter() - t0
    flops[v] = harness.compiled_flops(compiled)
    info[v] = {"compile_s": compile_s, "memory": harness.memory_stats(compiled),
               "timed_strategy": None, "flops_as_timed": None}
    if bench.cfg.reference == "online":
      info[v]["timed_strategy"] = setup["online_strategy"]
      if setup["online_strategy"] != "vmap":   # FLOPs of the same work with vmap
        info[v]["flops_as_timed"] = flops[v]
        vb = build(v, "vmap")
        flops[v] = harness.flops(vb.step, vb.state, vb.batch, vb.ref)
        del vb
    calls[v] = harness.stepper(bench)
    harness.time_call(calls[v], 2)                      # warm up (already compiled)
    print(f"# {name} {v}: compiled in {compile_s:.1f} s", flush=True)
  times = harness.round_robin(calls, setup["rounds"], rng, setup["steps_per_round"])
  base_t, base_f = np.median(times["uniform"]), flops["uniform"]
  rows = []
  for v in variants:
    t = float(np.median(times[v]))
    predicted = flops[v] / base_f
    rows.append({
        "model": name, "variant": v, **harness.summarize(times[v]),
        **harness.ratios(times[v], times["uniform"]), "flops": flops[v],
        "flop_ratio": predicted, "measured_over_predicted": (t / base_t) / predicted,
        "batch_size": config.batch_size, "k": configuration.num_selected(config),
        "rounds": setup["rounds"], "steps_per_round": setup["steps_per_round"],
        "model_config": config.model.to_dict(), **info[v],
    })
  return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
  """The results table, with the machine and the models above it."""
  lines = [harness.machine_line(info, ("flax", "optax")), harness.load_line(info), ""]
  for name in dict.fromkeys(r["model"] for r in rows):
    r0 = next(r for r in rows if r["model"] == name)
    m = r0["model_config"]
    desc = (f"MLP {tuple(m['hidden'])} on float32 [B, 40]" if m["name"] == "mlp" else
            f"ResNet-18 ({m['stem']} stem) width {m['width']}, stages "
            f"{tuple(m['stage_sizes'])}, uint8 [B, 32, 32, 3] + crop_flip on device")
    lines.append(f"- **{name}**: {desc}; B = {r0['batch_size']}, k = {r0['k']}, C = 10; "
                 f"{r0['rounds']} shuffled interleaved rounds of {r0['steps_per_round']} "
                 "step(s).")
  lines.append("")
  header = ["model", "variant", "ms/step", "measured ratio", "ratio of minima", "FLOP ratio",
            "measured / predicted", f"≤ {TARGET}", "compile s"]
  table = []
  for r in rows:
    variant = r["variant"]
    if r["timed_strategy"]:
      variant += f" [timed: {r['timed_strategy']}; FLOPs: vmap]"
    table.append([r["model"], variant, f"{r['median_ms']:.2f}", f"{r['ratio']:.2f}",
                  f"{r['ratio_of_mins']:.2f}", f"{r['flop_ratio']:.2f}",
                  f"{r['measured_over_predicted']:.2f}",
                  "yes" if r["measured_over_predicted"] <= TARGET else "**no**",
                  f"{r['compile_s']:.1f}"])
  lines += harness.markdown_table(header, table, "llrrrrrlr")
  lines += ["", "measured ratio = median(variant) / median(uniform) over the same rounds; "
            "FLOP ratio = XLA cost-analysis FLOPs of the compiled step / the uniform step's "
            "(the predicted ratio); measured / predicted ≤ 1.15 is the target."]
  for r in rows:
    if r["flops_as_timed"]:
      lines.append(f"{r['model']} online experts: XLA counts the `{r['timed_strategy']}` "
                   f"step at {r['flops_as_timed'] / r['flops']:.2f}× the FLOPs of the vmap "
                   "step (a loop body is counted once), so its ratio uses the vmap FLOPs.")
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  p.add_argument("--model", type=harness.comma_list, default=None,
                 help="comma-separated among mlp, resnet (default: mlp; --all: both)")
  p.add_argument("--all", action="store_true",
                 help="both models and also the reducr + group_dro / + meta variants")
  p.add_argument("--config", default=None, help="MLP config (default configs/default.py)")
  p.add_argument("--rounds", type=int, default=30, help="MLP: interleaved rounds")
  p.add_argument("--steps_per_round", type=int, default=10, help="MLP: steps per timing")
  p.add_argument("--input_dim", type=int, default=40, help="MLP input features")
  p.add_argument("--resnet_width", type=int, default=8)
  p.add_argument("--resnet_stages", type=harness.int_list, default="1,1,1,1",
                 help="ResNet BasicBlocks per stage (ResNet-18: 2,2,2,2)")
  p.add_argument("--resnet_batch", type=int, default=160, help="ResNet B (k = 10 %%)")
  p.add_argument("--resnet_rounds", type=int, default=8,
                 help="ResNet: interleaved rounds of one step")
  p.add_argument("--online_strategy", default="auto",
                 choices=("auto",) + stacked_experts.STRATEGIES,
                 help="expert_losses strategy the online variant is timed with")
  p.add_argument("--seed", type=int, default=0)
  harness.add_out_flag(p, "benchmarks/results/train_step_<backend>.json")
  args = p.parse_args(argv)
  args.model = args.model or (list(MODELS) if args.all else ["mlp"])
  for name in args.model:
    if name not in MODELS:
      p.error(f"--model entries must be among {list(MODELS)}, got {name!r}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Times every variant's step for every model, prints and writes the results."""
  args = parse_args(argv)
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  variants = BASE_VARIANTS + (EXTRA_VARIANTS if args.all else ())
  rng = np.random.default_rng(args.seed)
  rows = []
  for name in args.model:
    t0 = time.perf_counter()
    rows += bench_model(name, variants, args, rng)
    print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)
  harness.finish_info(info, start)
  harness.write_results(args.out, f"train_step_{info['backend']}",
                        {"meta": {**info, "flags": harness.flag_values(args)}, "rows": rows},
                        markdown(rows, info))


if __name__ == "__main__":
  main()
