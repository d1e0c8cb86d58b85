"""Stage 1: C stacked experts' training step per strategy, vs one plain model step.

For the CIFAR ResNet (3×3 stem) and the ImageNet-stem ResNet (7×7 stem + max-pool), at
C = 10 and 14, every strategy of :func:`reducr_jax.train.experts_step.experts_train_step` —
``vmap`` (all C in one batched program), ``chunk`` (``vmap`` of C/2 at a time,
``lax.map`` over the two chunks), ``map`` (one expert at a time in one program), ``loop`` (unrolled) — is
compiled and timed on the same holdout batch, interleaved with **one plain model step**
(one unstacked model's γ-weighted loss, gradient and AdamW update at the top level of its
program: no loop, no stacking). On CPU a ``map (XLA conv layouts)`` row also runs the
in-place ``map`` without :func:`reducr_jax.core.conv_layout.canonical_convs`, as it ran before
issue 23 (its convolutions' gradients inside the loop miss XLA:CPU's Eigen kernels). Per
row:

* time: median of interleaved rounds, its ratio to the plain step (C independent models
  cost about C×), and **per expert** (÷ C): ≈ 1 when a strategy runs each expert at a
  plain step's rate, far above 1 where it hurts (the issue-23 pathology: ``map`` at 8–70×);
* memory: the compiled program's peak from XLA's memory analysis (argument + output +
  temp − aliased), and the process's peak resident set while that strategy compiles and
  runs (``VmHWM``, reset through ``/proc/self/clear_refs`` before each; Linux only), both
  as ratios to the plain step's;
* with ``--forward`` (default), stage 1's forward-only programs against **one plain
  forward** (one model's eval-mode losses at the top level): ``expert_losses`` with
  ``map`` (the loss table on CPU) and the same in a ``lax.map`` over 2 slices (the
  validation sums with 2 microbatches), per expert: they stay ≈ 1 because a forward's
  convolutions are canonical as JAX emits them (only the gradient's are not, issue 23);
* which strategy ``auto`` picks (:func:`reducr_jax.train.stage1_memory.strategy_candidates` and
  the budget of this device).

Models are shrunk to run on a CPU (``--width``, ``--stages``, ``--image``); on a GPU/TPU
pass the full ResNet-18 (``--width 64 --stages 2,2,2,2 --image 224``).

A second table needs no time on the device: the compiled memory of the **full-size**
paper steps (``--full``: ResNet-18 at 224 px with the ImageNet stem and C = 14 as for
Clothing1M, at 32 px with the CIFAR stem and C = 10 as for CIFAR-10; expert batch 320,
AdamW) for every strategy and for ``map`` with the gradient accumulated over 16 slices,
from XLA's memory analysis of programs lowered from shapes only (nothing is allocated).

  python benchmarks/stage1.py [--classes 10,14] [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import harness
from reducr_jax.core import class_weighted_losses
from reducr_jax.train import device_memory
from reducr_jax.train import experts_step
from reducr_jax import models
from reducr_jax.core import stacked_experts
from reducr_jax.train import stage1_memory
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


def plain_step(fns: models.ModelFns, tx: optax.GradientTransformation):
  """One unstacked model's training step on expert 0's γ-weighted loss: the baseline."""
  def step(state, x, y, gamma):
    def loss_fn(p):
      logits, model_state = fns.apply_train(p, state.model_state, x, jax.random.PRNGKey(0))
      return class_weighted_losses.class_weighted_loss(
          class_weighted_losses.cross_entropy(logits, y), y, 0, gamma), model_state
    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (stacked_experts.ExpertsState(optax.apply_updates(state.params, updates), opt_state,
                                         model_state), loss[None])
  return step


def build(stem: str, num: int, strategy: str, chunk: int, args,
          canonical: bool | None = None) -> tuple[Any, tuple]:
  """(compiled step, its arguments) of ``num`` stacked ResNets' training step
  (``strategy="plain"``: one unstacked model's, :func:`plain_step`)."""
  module = ResNet18(num_outputs=10, stem=stem, width=args.width,
                    stage_sizes=tuple(args.stages))
  x = np.random.default_rng(0).integers(0, 256, (args.batch, args.image, args.image, 3),
                                        dtype=np.uint8)
  y = (np.arange(args.batch) % 10).astype(np.int32)
  fns = models.model_fns(module, jnp.zeros((1,) + x.shape[1:], jnp.uint8), init_impl="rbg")
  tx = optax.adamw(1e-3)
  if strategy == "plain":
    params, model_state = jax.jit(fns.init)(jax.random.PRNGKey(0))
    state = stacked_experts.ExpertsState(params, tx.init(params), model_state)
    step = jax.jit(plain_step(fns, tx), donate_argnums=0)
  else:
    state = stacked_experts.init_experts(fns.init, tx, jax.random.PRNGKey(0), num)
    step = jax.jit(functools.partial(experts_step.experts_train_step, fns.apply, tx,
                                     train_apply_fn=fns.apply_train, strategy=strategy,
                                     chunk=chunk, canonical_convs=canonical),
                   donate_argnums=0)
  args_ = (state, jnp.asarray(x), jnp.asarray(y), 9.0)
  return step.lower(*args_).compile(), args_


# Per-expert time of `map` over a plain step that the table flags as missed (issue 23).
PER_EXPERT_TARGET = 1.3


# (stem, image size, C) of the full-size table: Clothing1M's and CIFAR-10's.
FULL = (("imagenet", 224, 14), ("cifar", 32, 10))


def full_size_memory(batch: int, slices: int) -> list[dict[str, Any]]:
  """Compiled memory (GiB per device) of the full ResNet-18 experts' step per strategy."""
  rows = []
  for stem, image, num in FULL:
    module = ResNet18(num_outputs=num, stem=stem)
    fns = models.model_fns(module, jnp.zeros((1, image, image, 3), jnp.float32),
                           init_impl="rbg")
    tx = optax.adamw(1e-3)
    x = jax.ShapeDtypeStruct((batch, image, image, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    base = None
    for name, n, strategy, chunk, micro in [
        ("one model", 1, "map", 0, 1), ("vmap", num, "vmap", 0, 1),
        (f"chunk {num // 2}", num, "vmap", num // 2, 1), ("map", num, "map", 0, 1),
        (f"map, {slices} slices", num, "map", 0, slices)]:
      state = jax.eval_shape(lambda n=n: stacked_experts.init_experts(fns.init, tx,
                                                                      jax.random.PRNGKey(0), n))
      step = jax.jit(functools.partial(experts_step.experts_train_step, fns.apply, tx,
                                       train_apply_fn=fns.apply_train, strategy=strategy,
                                       chunk=chunk, microbatches=micro), donate_argnums=0)
      t0 = time.perf_counter()
      mem = device_memory.compiled_memory(step.lower(state, x, y, 9.0).compile())
      gib = {k: v / 2**30 for k, v in mem.items()}
      base = base or gib.get("peak")
      rows.append({"model": f"ResNet-18 {stem} {image}px", "num_experts": num,
                   "batch": batch, "strategy": name, "compile_s": time.perf_counter() - t0,
                   **{f"{k}_gib": v for k, v in gib.items()},
                   "peak_ratio": gib["peak"] / base if base and "peak" in gib else None})
      print(f"full {stem} C={num} {name}: {gib}", flush=True)
  return rows


def build_forward(stem: str, num: int, how: str, args) -> tuple[Any, tuple]:
  """(compiled forward, its arguments) of stage 1's forward-only programs, in eval mode:
  ``how="plain"``: one model's per-example losses ``[B]`` at the top level;
  ``"map"``: :func:`reducr_jax.core.stacked_experts.expert_losses` of ``num`` stacked models with
  ``map`` (the loss table's program on CPU) → ``[B, C]``; ``"slices"``: the same in a
  ``lax.map`` over 2 slices of the batch (stage 1's validation sums,
  :func:`reducr_jax.train.stage1_trainer.step_functions` with 2 microbatches)."""
  module = ResNet18(num_outputs=10, stem=stem, width=args.width,
                    stage_sizes=tuple(args.stages))
  x = np.random.default_rng(0).integers(0, 256, (args.batch, args.image, args.image, 3),
                                        dtype=np.uint8)
  y = (np.arange(args.batch) % 10).astype(np.int32)
  fns = models.model_fns(module, jnp.zeros((1,) + x.shape[1:], jnp.uint8), init_impl="rbg")
  params, model_state = stacked_experts.init_stacked(fns.init, jax.random.PRNGKey(0),
                                             1 if how == "plain" else num)
  variables = models.variables(params, model_state)
  if how == "plain":
    variables = jax.tree.map(lambda a: a[0], variables)
    fn = lambda v, x, y: class_weighted_losses.cross_entropy(fns.apply(v, x), y)  # noqa: E731
  elif how == "map":
    fn = functools.partial(stacked_experts.expert_losses, fns.apply, strategy="map")
  else:
    def fn(v, x, y):
      table = jax.lax.map(lambda xy: stacked_experts.expert_losses(fns.apply, v, *xy, "map"),
                          (x.reshape((2, -1) + x.shape[1:]), y.reshape((2, -1))))
      return table.reshape((-1, table.shape[-1]))
  args_ = (variables, jnp.asarray(x), jnp.asarray(y))
  return jax.jit(fn).lower(*args_).compile(), args_


# The forward-only variants (validation sums, loss table) and their baseline.
FORWARD_BASE = "forward: one model"


def bench_model(stem: str, num: int, args, rng) -> list[dict[str, Any]]:
  """Rows for one (model, C): the training step per strategy against one plain step and,
  with ``--forward``, the forward-only programs against one plain forward."""
  variants = {"one plain step": (1, "plain", 0, None), "map": (num, "map", 0, None),
              "loop": (num, "loop", 0, None), "vmap": (num, "vmap", 0, None),
              f"chunk {num // 2}": (num, "vmap", num // 2, None)}
  if jax.default_backend() == "cpu" and args.xla_layouts:
    variants["map (XLA conv layouts)"] = (num, "map", 0, False)
  variants = {k: v for k, v in variants.items()
              if k == "one plain step" or v[1] in args.strategies
              or (v[1] == "vmap" and v[2] and "chunk" in args.strategies)}
  forward = {FORWARD_BASE: (1, "plain"), "forward: map": (num, "map"),
             "forward: map, 2 slices": (num, "slices")} if args.forward else {}
  compiled, rss, mem, first = {}, {}, {}, {}
  calls = {}
  for name, spec in {**variants, **forward}.items():
    _rss_reset()
    t0 = time.perf_counter()
    if name in forward:
      c, a = build_forward(stem, num, spec[1], args)
      call = functools.partial(c, *a)
    else:
      n, strategy, chunk, canonical = spec
      c, a = build(stem, n, strategy, chunk, args, canonical)
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
  base = "one plain step"
  picks = stage1_memory.strategy_candidates(num, "auto", 0, args.batch)
  rows = []
  for name in [*variants, *forward]:
    n = (forward if name in forward else variants)[name][0]
    base = FORWARD_BASE if name in forward else "one plain step"
    per_expert = harness.ratios(np.asarray(times[name]) / n, times[base])
    r = {"model": stem, "num_experts": n, "strategy": name, **harness.summarize(times[name]),
         **harness.ratios(times[name], times[base]),
         "per_expert_ratio": per_expert["ratio"],
         "per_expert_ratio_of_mins": per_expert["ratio_of_mins"], "first_call_s": first[name],
         "compiled_peak_mib": None if mem[name] is None else mem[name] / 2**20,
         "compiled_peak_ratio": None if not mem[base] else mem[name] / mem[base],
         "rss_peak_gib": rss[name],
         "rss_ratio": None if not rss[base] else rss[name] / rss[base],
         "auto_candidates": picks}
    rows.append(r)
  return rows


def full_markdown(rows) -> list[str]:
  """The full-size compiled-memory table."""
  if not rows:
    return []
  lines = ["", "## Full-size steps: compiled memory per device (XLA memory analysis, shapes "
           "only)", "",
           f"ResNet-18, expert batch {rows[0]['batch']}, fp32, AdamW; `argument` = the "
           "stacked parameters and moments (donated: the outputs alias them), `temp` = "
           "activations and the step's scratch.", ""]
  lines += harness.markdown_table(
      ["model", "C", "strategy", "argument GiB", "temp GiB", "peak GiB", "× one model",
       "compile s"],
      [[r["model"], r["num_experts"], r["strategy"], f"{r.get('argument_gib', 0):.2f}",
        f"{r.get('temp_gib', 0):.2f}", f"{r.get('peak_gib', 0):.2f}",
        "" if r["peak_ratio"] is None else f"{r['peak_ratio']:.1f}",
        f"{r['compile_s']:.0f}"] for r in rows], "llrrrrrr")
  return lines


def markdown(info, rows, args, full_rows=()) -> str:
  lines = ["# Stage 1: stacked experts' training step per strategy vs one plain model step",
           "", harness.machine_line(info), harness.load_line(info), "",
           f"ResNet width {args.width}, stages {tuple(args.stages)}, {args.image}×{args.image} "
           f"images, holdout batch {args.batch}, AdamW, {args.rounds} interleaved rounds. "
           "Ratios are to **one plain model step** (one unstacked model's loss, gradient and "
           "AdamW update, no loop); **per expert** = the step's time ÷ C ÷ the plain "
           "step's (≈ 1: each expert trains at a plain step's rate). `map (XLA conv "
           "layouts)` = the in-place `map` without `conv_layout.canonical_convs`, as before "
           "issue 23; `forward: …` rows are eval-mode forwards (per-example losses) "
           "against one plain forward. Compiled peak = XLA memory analysis per device; "
           "RSS = the process's peak resident set while the variant compiled and ran (includes the process's "
           "baseline, so its ratios understate the differences).", ""]
  lines += harness.markdown_table(
      ["model", "C", "strategy", "ms (median)", "× plain", "per expert × plain",
       "per expert (min/min)", "compiled peak MiB", "× plain", "RSS peak GiB",
       "1st call s"],
      [[r["model"], r["num_experts"], r["strategy"], f"{r['median_ms']:.1f}",
        f"{r['ratio']:.2f}", f"**{r['per_expert_ratio']:.2f}**",
        f"{r['per_expert_ratio_of_mins']:.2f}",
        "" if r["compiled_peak_mib"] is None else f"{r['compiled_peak_mib']:.0f}",
        "" if r["compiled_peak_ratio"] is None else f"{r['compiled_peak_ratio']:.2f}",
        "" if r["rss_peak_gib"] is None else f"{r['rss_peak_gib']:.2f}",
        f"{r['first_call_s']:.1f}"] for r in rows], "llllrrrrrrr")
  slow = [f"{r['model']} C={r['num_experts']} `{r['strategy']}` "
          f"{r['per_expert_ratio']:.1f}×" for r in rows
          if r["strategy"] in ("map", "forward: map", "forward: map, 2 slices")
          and r["per_expert_ratio"] > PER_EXPERT_TARGET]
  lines += ["", f"Target: `map` (the CPU default) within {PER_EXPERT_TARGET}× of a plain step "
            "per expert, and its forward programs (`forward: …`: the loss table, and the "
            "validation sums in slices) within it of one plain forward (eval mode): "
            + ("**missed**: " + ", ".join(slow) if slow else "met") + "."]
  cands = rows[0]["auto_candidates"] if rows else []
  lines += ["", f"`auto` on this backend (`{info['backend']}`) tries, best first: "
            + ", ".join(f"{s}{'' if not c else f' (chunk {c})'}"
                        f"{'' if m == 1 else f' in {m} slices'}" for s, c, m in cands)
            + f"; the first whose compiled peak (+ one model's share) fits "
              f"{device_memory.device_capacity_bytes() / 2**30:.1f} GiB per device "
              "(`experts.max_memory_gb` = 0)."]
  lines += full_markdown(full_rows)
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
  p.add_argument("--strategies", type=harness.comma_list, default="map,loop,vmap,chunk",
                 help="which of map, loop, vmap, chunk to time besides the plain step")
  p.add_argument("--xla_layouts", action=argparse.BooleanOptionalAction, default=True,
                 help="on CPU also `map` without canonical convolutions (before issue 23)")
  p.add_argument("--forward", action=argparse.BooleanOptionalAction, default=True,
                 help="also the forward-only programs (validation sums, loss table) with "
                      "`map` vs one plain forward")
  p.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                 help="also the full-size compiled-memory table (compile only)")
  p.add_argument("--full_batch", type=int, default=320)
  p.add_argument("--full_slices", type=int, default=16)
  harness.add_out_flag(p, f"benchmarks/results/stage1_<backend>.json")
  args = p.parse_args()
  info = harness.machine_info(("optax",))
  start = time.perf_counter()
  rng = np.random.default_rng(0)
  rows = []
  for stem in args.stems:
    for num in args.classes:
      rows += bench_model(stem, num, args, rng)
  full_rows = full_size_memory(args.full_batch, args.full_slices) if args.full else []
  harness.finish_info(info, start)
  harness.write_results(args.out, f"stage1_{info['backend']}",
                        {"info": info, "flags": harness.flag_values(args), "rows": rows,
                         "full_size": full_rows},
                        markdown(info, rows, args, full_rows))


if __name__ == "__main__":
  main()
