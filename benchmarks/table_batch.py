"""The loss table's forward by batch size: rows per second and workspace, side by side.

The reference-loss table (:func:`reducr_jax.train.references.precompute_loss_table`) scores
every training row once with the C stacked experts. On CPU its batch is also held under
:data:`reducr_jax.train.stage1_memory.CPU_FORWARD_WORKSPACE_BYTES` of activations; this
measures why: for each batch size, the same jitted program as the table's
(:func:`reducr_jax.core.stacked_experts.expert_losses` with the experts' params as an
argument) is compiled, its workspace (compiled peak − arguments) read from XLA's memory
analysis, and its calls timed in interleaved rounds (shuffled order each round). The
product is rows per second per batch and its ratio to the largest batch's.

  python benchmarks/table_batch.py                      # ResNet-18, 224 px, 2 experts
  python benchmarks/table_batch.py --image 32 --stem cifar --batches 64,256,1024

Writes ``benchmarks/results/table_batch_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

import harness
from reducr_jax.core import stacked_experts
from reducr_jax.models.resnet import ResNet18
from reducr_jax import models
from reducr_jax.train import device_memory
from reducr_jax.train import stage1_memory


def main() -> None:
  p = harness.argument_parser(__doc__)
  p.add_argument("--stem", default="imagenet", help="ResNet stem: imagenet | cifar")
  p.add_argument("--image", type=int, default=224)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--classes", type=int, default=14)
  p.add_argument("--experts", type=int, default=2)
  p.add_argument("--strategy", default="auto", help="vmap | map | loop | auto")
  p.add_argument("--batches", type=harness.int_list, default="8,16,32,64,128")
  p.add_argument("--rounds", type=int, default=3)
  harness.add_out_flag(p, "benchmarks/results/table_batch_<backend>.json")
  args = p.parse_args()
  start = time.perf_counter()
  info = harness.machine_info(("optax",))
  strategy = (stacked_experts.default_strategy() if args.strategy == "auto"
              else args.strategy)
  module = ResNet18(num_outputs=args.classes, stem=args.stem, width=args.width)
  x0 = np.zeros((1, args.image, args.image, 3), np.uint8)
  fns = models.model_fns(module, x0, init_impl="rbg")
  params, state = jax.jit(jax.vmap(fns.init))(jax.random.split(jax.random.PRNGKey(0),
                                                               args.experts))
  variables = {"params": params, **state}
  fn = jax.jit(functools.partial(stacked_experts.expert_losses, fns.apply,
                                 strategy=strategy))
  rng = np.random.default_rng(0)
  calls, memory = {}, {}
  for b in args.batches:
    x = rng.integers(0, 256, (b, args.image, args.image, 3), dtype=np.uint8)
    y = (np.arange(b) % args.classes).astype(np.int32)
    compiled = fn.lower(variables, x, y).compile()
    memory[b] = device_memory.compiled_memory(compiled)
    calls[str(b)] = functools.partial(compiled, variables, x, y)
    jax.block_until_ready(calls[str(b)]())                      # warm up
    print(f"batch {b}: compiled, peak {harness.mib(memory[b].get('peak', 0))} MiB", flush=True)
  times = harness.round_robin(calls, args.rounds, rng)
  largest = str(max(args.batches))
  rows = []
  for b in args.batches:
    mem = memory[b]
    work = mem.get("peak", 0) - mem.get("argument", 0)
    rate = b / np.median(times[str(b)])
    rows.append({"batch": b, **harness.summarize(times[str(b)]), "rows_per_s": rate,
                 "rows_per_s_ratio": rate / (max(args.batches) / np.median(times[largest])),
                 "workspace_bytes": work, "peak_bytes": mem.get("peak"),
                 "within_cpu_workspace": work <= stage1_memory.CPU_FORWARD_WORKSPACE_BYTES})
  harness.finish_info(info, start)
  table = [f"# Loss-table forward by batch ({args.experts} × ResNet-18 width {args.width}, "
           f"{args.stem} stem, {args.image} px, `{strategy}`)", "",
           harness.machine_line(info, ("flax", "optax")), harness.load_line(info), "",
           f"Median of {args.rounds} interleaved rounds; workspace = compiled peak − "
           f"arguments (the experts' params); the CPU limit is "
           f"{harness.mib(stage1_memory.CPU_FORWARD_WORKSPACE_BYTES)} MiB.", ""]
  table += harness.markdown_table(
      ["batch", "median ms", "rows/s", f"vs batch {largest}", "workspace MiB", "≤ CPU limit"],
      [[r["batch"], f"{r['median_ms']:.0f}", f"{r['rows_per_s']:.2f}",
        f"{r['rows_per_s_ratio']:.2f}", harness.mib(r["workspace_bytes"]),
        "yes" if r["within_cpu_workspace"] else "no"] for r in rows], "rrrrrl")
  harness.write_results(args.out, f"table_batch_{info['backend']}",
                        {"info": info, "flags": harness.flag_values(args), "rows": rows},
                        "\n".join(table) + "\n")


if __name__ == "__main__":
  main()
