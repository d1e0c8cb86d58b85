"""Meta-reweighting (Ren et al.) and Group DRO train steps as ratios to a plain step.

For each model (an MLP 2×256 on 40 features, and optionally a small CNN on 32×32×3) and
the same batch (n train + m validation examples, 10 classes), these jitted steps are timed
side by side in one process:

  * ``plain``       — the baseline: gradient of the mean cross-entropy on the training
    batch and an SGD update;
  * ``meta``        — :func:`reducr_jax.core.meta_reweight.example_weights` (virtual SGD step,
    validation gradient, ε-gradient by nested ``jax.grad``) followed by the gradient of
    the weighted loss ``Σ w_i ℓ_i`` and an SGD update;
  * ``weights``     — the weights alone (the meta step without its training update);
  * ``meta_jvp``    — analysis only: the same weights from the first-order closed form
    ``g_i = −lr·⟨∇L_val(θ), ∇ℓ_i(θ)⟩`` (exact for a virtual SGD step at ε = 0) computed
    as one ``jax.jvp`` of the training losses, then the same training update; it shows
    what the nested ``jax.grad`` costs over the minimum;
  * ``group_dro``   — :func:`reducr_jax.core.group_dro.robust_loss` (update q, q-weighted
    per-class loss), its gradient and an SGD update.

Every step is compiled and warmed up first, then the variants run in round-robin, in a
freshly shuffled order each round, each timed call being ``--calls`` back-to-back steps
followed by ``block_until_ready``. Reported: ``median(variant) / median(plain)`` over the
same rounds, the ratio of minima, and the FLOP ratio from XLA's cost analysis of the
compiled steps (what the ratio would be if time were proportional to FLOPs).

Run (about a minute for the MLP on 2 CPU cores; ``--models mlp,cnn`` adds the CNN)::

  python benchmarks/meta_reweight.py --models mlp,cnn

Writes ``benchmarks/results/meta_reweight_<backend>.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import harness  # this folder is sys.path[0] when run as ``python benchmarks/meta_reweight.py``
from reducr_jax.core import mwu
from reducr_jax.core import group_dro
from reducr_jax.core import meta_reweight

NUM_CLASSES = harness.NUM_CLASSES
VARIANTS = ("plain", "meta", "weights", "meta_jvp", "group_dro")


def make_steps(model: nn.Module, lr: float, eta: float) -> dict[str, Callable]:
  """The jitted steps; each takes ``(params, log_q, train, val)``."""

  def losses(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])

  def sgd(params, grads):
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)

  def plain(params, log_q, train, val):
    del val
    grads = jax.grad(lambda p: jnp.mean(losses(p, train)))(params)
    return sgd(params, grads), log_q

  def weights(params, log_q, train, val):
    del log_q
    return meta_reweight.example_weights(losses, params, train, val, lr)

  def meta(params, log_q, train, val):
    w = meta_reweight.example_weights(losses, params, train, val, lr)
    grads = jax.grad(lambda p: meta_reweight.weighted_loss(losses(p, train), w))(params)
    return sgd(params, grads), log_q

  def meta_jvp(params, log_q, train, val):
    # Analysis only: the first-order closed form g_i = −lr·⟨∇L_val(θ), ∇ℓ_i(θ)⟩ (exact for
    # a virtual SGD step at ε = 0) as one JVP of the training losses along ∇L_val.
    g_val = jax.grad(lambda p: jnp.mean(losses(p, val)))(params)
    _, dots = jax.jvp(lambda p: losses(p, train), (params,), (g_val,))
    w = meta_reweight.weights_from_meta_gradient(-lr * dots)
    grads = jax.grad(lambda p: meta_reweight.weighted_loss(losses(p, train), w))(params)
    return sgd(params, grads), w

  def dro(params, log_q, train, val):
    del val

    def loss_fn(p):
      return group_dro.robust_loss(losses(p, train), train["y"], log_q, eta, NUM_CLASSES)

    grads, new_log_q = jax.grad(loss_fn, has_aux=True)(params)
    return sgd(params, grads), new_log_q

  return {"plain": jax.jit(plain), "meta": jax.jit(meta), "weights": jax.jit(weights),
          "meta_jvp": jax.jit(meta_jvp), "group_dro": jax.jit(dro)}


def bench_model(name: str, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
  """All variants for one model → result rows."""
  model, shape = harness.make_model(name, args.cnn_features)
  data_rng = np.random.default_rng(args.seed)
  batch = lambda size: {  # noqa: E731
      "x": jnp.asarray(data_rng.normal(size=(size,) + shape), jnp.float32),
      "y": jnp.asarray(data_rng.integers(0, NUM_CLASSES, size), jnp.int32)}
  train, val = batch(args.train_size), batch(args.val_size)
  params = model.init(jax.random.key(args.seed), train["x"][:1])["params"]
  log_q = mwu.init(NUM_CLASSES)
  steps = make_steps(model, args.lr, args.eta)
  operands = (params, log_q, train, val)

  compile_s, flop = {}, {}
  for v, fn in steps.items():
    start = time.perf_counter()
    flop[v] = harness.flops(fn, *operands)                # lowers and compiles
    compile_s[v] = time.perf_counter() - start
  # The unit for the FLOP breakdown: one forward pass + loss on the training batch.
  forward = jax.jit(lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b["x"]), b["y"]))
  forward_flops = harness.flops(forward, params, train)
  w = np.asarray(steps["weights"](*operands))
  assert np.all(np.isfinite(w)) and abs(w.sum() - 1.0) < 1e-4, "weights are not normalised"
  jvp_max_diff = float(np.abs(np.asarray(steps["meta_jvp"](*operands)[1]) - w).max())
  assert jvp_max_diff < 1e-4, f"meta_jvp weights differ from example_weights by {jvp_max_diff}"

  calls = {v: functools.partial(fn, *operands) for v, fn in steps.items()}
  for fn in calls.values():                               # warm, after all compiles
    jax.block_until_ready(fn())
  per_timing = args.calls if args.calls else (10 if name == "mlp" else 1)
  times = harness.round_robin(calls, args.rounds, rng, per_timing)
  rows = []
  for v in VARIANTS:
    rows.append({
        "model": name, "variant": v, "train_size": args.train_size,
        "val_size": args.val_size, **harness.summarize(times[v], count_key="n_timings"),
        "calls_per_timing": per_timing, **harness.ratios(times[v], times["plain"]),
        "flops": flop[v], "flop_ratio": flop[v] / flop["plain"],
        "flops_in_train_forwards": flop[v] / forward_flops, "compile_s": compile_s[v],
        "nonzero_weights": int(np.count_nonzero(w)) if v in ("meta", "weights") else None,
        "max_abs_weight_diff": jvp_max_diff if v == "meta_jvp" else None,
    })
  return rows


def markdown(rows: list[dict], info: dict, args: argparse.Namespace) -> str:
  """The results as a markdown table with the machine above and the FLOP breakdown below."""
  lines = [
      harness.machine_line(info, ("flax", "optax")),
      f"Batch: {args.train_size} train + {args.val_size} validation examples, 10 classes; "
      f"{args.rounds} interleaved rounds; CNN features {tuple(args.cnn_features)}; "
      + harness.load_line(info),
      "",
      "| model | step | ms (median) | ratio to plain | ratio of minima | FLOP ratio "
      "| FLOPs in train forwards | compile s |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(f"| {r['model']} | {r['variant']} | {r['median_ms']:.3f} | "
                 f"{r['ratio']:.2f} | {r['ratio_of_mins']:.2f} | {r['flop_ratio']:.2f} | "
                 f"{r['flops_in_train_forwards']:.2f} | {r['compile_s']:.2f} |")
  lines += ["", "Where the meta step's FLOPs go (in forward passes + loss on the training "
            "batch, from the rows above):", ""]
  for model in dict.fromkeys(r["model"] for r in rows):
    f = {r["variant"]: r["flops_in_train_forwards"] for r in rows if r["model"] == model}
    lines.append(
        f"- {model}: plain {f['plain']:.2f} (forward + backward); meta {f['meta']:.2f} = "
        f"weights {f['weights']:.2f} + training update {f['meta'] - f['weights']:.2f}; the "
        f"weights from one JVP instead of nested `jax.grad` make the whole step "
        f"{f['meta_jvp']:.2f}. Nested `jax.grad`'s extra {f['meta'] - f['meta_jvp']:.2f} "
        f"≈ one backward pass on the training batch (plain − forward = {f['plain'] - 1:.2f}): "
        "the inner gradient ∇_θ Σ ε_i ℓ_i, identically 0 at ε = 0 (θ' = θ), which XLA "
        "cannot know.")
  lines += [
      "",
      "ratio = median(step) / median(plain) over the same interleaved rounds; ratio of "
      "minima = min / min; FLOP ratio = XLA cost-analysis FLOPs of the compiled step / "
      "those of the plain step; FLOPs in train forwards = the step's FLOPs / those of one "
      "forward pass + loss on the training batch. `weights` is the meta step without its "
      "training update; `meta_jvp` (analysis only, not a library function) is the meta step "
      "with the weights from the first-order closed form as one JVP instead of nested "
      "`jax.grad` (same weights, max abs diff in the JSON).",
  ]
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = harness.argument_parser(__doc__)
  harness.add_model_flags(p, models="mlp")
  p.add_argument("--train_size", type=int, default=100)
  p.add_argument("--val_size", type=int, default=100)
  p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
  p.add_argument("--calls", type=int, default=0,
                 help="steps per timing (0: 10 for the MLP, 1 for the CNN)")
  p.add_argument("--lr", type=float, default=0.1, help="SGD and virtual-step learning rate")
  p.add_argument("--eta", type=float, default=0.01, help="Group DRO step size")
  p.add_argument("--seed", type=int, default=0)
  harness.add_out_flag(p, "benchmarks/results/meta_reweight_<backend>.json")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs every model, prints and writes the results."""
  args = parse_args(argv)
  info = harness.machine_info(("optax",))
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  rows = []
  for name in args.models:
    t0 = time.perf_counter()
    rows.extend(bench_model(name, args, rng))
    print(f"# {name}: {time.perf_counter() - t0:.1f}s", flush=True)
  harness.finish_info(info, start)
  table = markdown(rows, info, args)
  harness.write_results(args.out, f"meta_reweight_{info['backend']}",
                        {"machine": info, "flags": harness.flag_values(args), "results": rows},
                        table)


if __name__ == "__main__":
  main()
