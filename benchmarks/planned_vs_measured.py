"""Measured vs planned step times of a config's programs on the accelerator this runs on.

On a GPU or TPU: builds the run's programs on the real devices with the planner's code
(:func:`reducr_jax.plan.plan_programs.build_all`: the trainer's step builders and chooser, from
shapes), calls each compiled program on zeros of its argument shapes (``--calls`` timed
calls after one warm-up, median) and prints it next to the roofline time at the chip's
published peaks (:mod:`reducr_jax.train.chips`; FLOPs from XLA's ``cost_analysis``, loop
bodies multiplied out). The ratio measured / planned says how far from its roofline each
program runs. On CPU it writes a one-line note and exits 0 (the planner's numbers are for
accelerators; ``python -m reducr_jax.plan`` compiles for TPU topologies from here).

  python benchmarks/planned_vs_measured.py [--config configs/cifar10.py] [--calls 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import harness
from reducr_jax.train import chips
from reducr_jax.config import configuration
from reducr_jax.plan import plan_inputs
from reducr_jax.plan import plan_programs


def _zeros(compiled, args):
  flat, tree = jax.tree.flatten(args)
  shardings = jax.tree.leaves(compiled.input_shardings[0],
                              is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  out = [jax.device_put(jnp.zeros(a.shape, a.dtype), s) for a, s in zip(flat, shardings)]
  return jax.tree.unflatten(tree, out)


def main() -> None:
  p = harness.argument_parser(__doc__)
  p.add_argument("--config", default="configs/cifar10.py")
  p.add_argument("--calls", type=int, default=5)
  harness.add_out_flag(p, "benchmarks/results/planned_vs_measured_<backend>.json")
  args = p.parse_args()
  info = harness.machine_info()
  start = time.perf_counter()
  backend = jax.default_backend()
  if backend == "cpu":
    rows, note = [], "no accelerator: nothing measured (the plan is for GPU/TPU chips)"
  else:
    config = configuration.load_config(args.config)
    config = configuration.with_overrides(config, {"model.pretrained": ""})
    chip = chips.get(jax.devices()[0].device_kind)
    splits = plan_inputs.abstract_splits(config)
    rows = []
    for prog in plan_programs.build_all(config, splits, jax.devices(), backend):
      times = []
      for i in range(args.calls + 1):
        inputs = _zeros(prog.compiled, prog.args)
        t0 = time.perf_counter()
        jax.block_until_ready(prog.compiled(*inputs))
        if i:
          times.append(time.perf_counter() - t0)
      planned = chip.roofline_seconds(prog.flops, prog.bytes_accessed)
      measured = statistics.median(times)
      rows.append({"program": prog.name, "strategy": prog.strategy, "planned_s": planned,
                   "measured_s": measured, "ratio": measured / planned})
      print(rows[-1], flush=True)
    note = f"{args.config} on {jax.devices()[0].device_kind} ({chip.name} peaks)"
  harness.finish_info(info, start)
  lines = ["# Measured vs planned (roofline) step times", "", harness.machine_line(info), "",
           note, ""]
  lines += harness.markdown_table(
      ["program", "strategy", "planned s", "measured s", "measured / planned"],
      [[r["program"], r["strategy"], f"{r['planned_s']:.3e}", f"{r['measured_s']:.3e}",
        f"{r['ratio']:.2f}"] for r in rows], "llrrr")
  harness.write_results(args.out, f"planned_vs_measured_{backend}",
                        {"info": info, "rows": rows, "note": note}, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
