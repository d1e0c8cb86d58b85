"""Stage 1: C stacked experts' training step per strategy, vs one model's step.

For the CIFAR ResNet (3×3 stem) and the ImageNet-stem ResNet (7×7 stem + max-pool), at
C = 10 and 14, every strategy of :func:`reducr_jax.experts.train_step` — ``vmap`` (all C
in one batched program), ``chunk`` (``vmap`` of C/2 at a time, ``lax.map`` over the two
chunks), ``map`` (one expert at a time in one program), ``loop`` (unrolled) — is
compiled and timed on the same holdout batch, interleaved with **one model's** training
step (the same function with C = 1). Per row:

* time: median of interleaved rounds, and its ratio to one model's step (C independent
  models cost about C×; more where the strategy hurts);
* memory: the compiled program's peak from XLA's memory analysis (argument + output +
  temp − aliased), and the process's peak resident set while that strategy compiles and
  runs (``VmHWM``, reset through ``/proc/self/clear_refs`` before each; Linux only), both
  as ratios to one model's step;
* which strategy ``auto`` picks (:func:`reducr_jax.train_experts.strategy_candidates` and
  the budget of this device).

Models are shrunk to run on a CPU (``--width``, ``--stages``, ``--image``); on a GPU/TPU
pass the full ResNet-18 (``--width 64 --stages 2,2,2,2 --image 224``).

  python benchmarks/stage1.py [--classes 10,14] [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import harness
from reducr_jax import device_memory
from reducr_jax import experts
from reducr_jax import models
from reducr_jax import train_experts
from reducr_jax.models.resnet import ResNet18


def _rss_reset() -> None:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _rss_peak_gib() -> float | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return None


def build(stem: str, num: int, strategy: str, chunk: int, args) -> tuple[Any, tuple]:
  """(compiled step, its arguments) of ``num`` stacked ResNets' training step."""
  module = ResNet18(num_outputs=10, stem=stem, width=args.width,
                    stage_sizes=tuple(args.stages))
  x = np.random.default_rng(0).integers(0, 256, (args.batch, args.image, args.image, 3),
                                        dtype=np.uint8)
  y = (np.arange(args.batch) % 10).astype(np.int32)
  fns = models.model_fns(module, jnp.zeros((1,) + x.shape[1:], jnp.uint8), init_impl="rbg")
  tx = optax.adamw(1e-3)
  state = experts.init_experts(fns.init, tx, jax.random.PRNGKey(0), num)
  step = jax.jit(functools.partial(experts.train_step, fns.apply, tx,
                                   train_apply_fn=fns.apply_train, strategy=strategy,
                                   chunk=chunk), donate_argnums=0)
  args_ = (state, jnp.asarray(x), jnp.asarray(y), 9.0)
  return step.lower(*args_).compile(), args_


def bench_model(stem: str, num: int, args, rng) -> list[dict[str, Any]]:
  """Rows for one (model, C)."""
  variants = {"one model": (1, "map", 0), "vmap": (num, "vmap", 0),
              f"chunk {num // 2}": (num, "vmap", num // 2), "map": (num, "map", 0),
              "loop": (num, "loop", 0)}
  compiled, rss, mem, first = {}, {}, {}, {}
  calls = {}
  for name, (n, strategy, chunk) in variants.items():
    _rss_reset()
    t0 = time.perf_counter()
    c, a = build(stem, n, strategy, chunk, args)
    state = [a[0]]

    def call(c=c, a=a, state=state):
      state[0], losses = c(state[0], *a[1:])
      return losses
    jax.block_until_ready(call())
    first[name] = time.perf_counter() - t0
    compiled[name], calls[name] = c, call
    mem[name] = device_memory.compiled_peak_bytes(c)
    rss[name] = _rss_peak_gib()
    print(f"{stem} C={num} {name}: compiled+1st {first[name]:.1f} s, peak "
          f"{(mem[name] or 0) / 2**20:.0f} MiB, RSS {rss[name]}", flush=True)
  times = harness.round_robin(calls, args.rounds, rng)
  base = "one model"
  picks = train_experts.strategy_candidates(num, "auto", 0)
  rows = []
  for name in variants:
    r = {"model": stem, "num_experts": num, "strategy": name, **harness.summarize(times[name]),
         **harness.ratios(times[name], times[base]), "first_call_s": first[name],
         "compiled_peak_mib": None if mem[name] is None else mem[name] / 2**20,
         "compiled_peak_ratio": None if not mem[base] else mem[name] / mem[base],
         "rss_peak_gib": rss[name],
         "rss_ratio": None if not rss[base] else rss[name] / rss[base],
         "auto_candidates": picks}
    rows.append(r)
  return rows


def markdown(info, rows, args) -> str:
  lines = ["# Stage 1: stacked experts' training step per strategy vs one model's step", "",
           harness.machine_line(info), harness.load_line(info), "",
           f"ResNet width {args.width}, stages {tuple(args.stages)}, {args.image}×{args.image} "
           f"images, holdout batch {args.batch}, AdamW, {args.rounds} interleaved rounds. "
           "Ratios are to **one model's** training step (same function, C = 1). Compiled "
           "peak = XLA memory analysis per device; RSS = the process's peak resident set "
           "while the variant compiled and ran (includes the process's baseline, so its "
           "ratios understate the differences).", ""]
  lines += harness.markdown_table(
      ["model", "C", "strategy", "ms (median)", "× one model", "× (min/min)",
       "compiled peak MiB", "× one model", "RSS peak GiB", "1st call s"],
      [[r["model"], r["num_experts"], r["strategy"], f"{r['median_ms']:.1f}",
        f"{r['ratio']:.2f}", f"{r['ratio_of_mins']:.2f}",
        "" if r["compiled_peak_mib"] is None else f"{r['compiled_peak_mib']:.0f}",
        "" if r["compiled_peak_ratio"] is None else f"{r['compiled_peak_ratio']:.2f}",
        "" if r["rss_peak_gib"] is None else f"{r['rss_peak_gib']:.2f}",
        f"{r['first_call_s']:.1f}"] for r in rows], "llllrrrrrr")
  cands = rows[0]["auto_candidates"] if rows else []
  lines += ["", f"`auto` on this backend (`{info['backend']}`) tries, best first: "
            + ", ".join(f"{s}{'' if not c else f' (chunk {c})'}" for s, c in cands)
            + f"; the first whose compiled peak (+ one model's share) fits "
              f"{device_memory.device_capacity_bytes() / 2**30:.1f} GiB per device "
              "(`experts.max_memory_gb` = 0)."]
  return "\n".join(lines) + "\n"


def main() -> None:
  p = harness.argument_parser(__doc__)
  p.add_argument("--classes", type=harness.int_list, default="10,14")
  p.add_argument("--stems", type=harness.comma_list, default="cifar,imagenet")
  p.add_argument("--width", type=int, default=8)
  p.add_argument("--stages", type=harness.int_list, default="1,1")
  p.add_argument("--image", type=int, default=32)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  harness.add_out_flag(p, f"benchmarks/results/stage1_<backend>.json")
  args = p.parse_args()
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  rng = np.random.default_rng(0)
  rows = []
  for stem in args.stems:
    for num in args.classes:
      rows += bench_model(stem, num, args, rng)
  harness.finish_info(info, start)
  harness.write_results(args.out, f"stage1_{info['backend']}",
                        {"info": info, "flags": harness.flag_values(args), "rows": rows},
                        markdown(info, rows, args))


if __name__ == "__main__":
  main()
