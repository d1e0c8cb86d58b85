"""Comparing two Adam runs that differ only in float summation order.

Two programs that compute the same gradients in a different order (``vmap`` vs ``lax.map``
vs chunks, one device vs a ``pmean`` over eight) agree to a few ulp in every gradient,
loss and moment. Adam's *parameters* do not: its step ``lr · m̂ / (√v̂ + ε)`` is
``≈ lr · g / (|g| + ε)`` at first, so where a gradient is within rounding noise of
``ε = 1e-8`` the step can take any value in ``[−lr, lr]`` (a measured 9.5e-5 apart after two
steps at lr 1e-2, on 1 of 131,072 parameters). What the math does bound:

* each entry: Adam's step satisfies ``|m̂_t / √v̂_t| ≤ A_t`` (Cauchy–Schwarz over the
  bias-corrected averages; ``A_1 = 1``, ``A_2 ≈ 1.0014``), so two runs differ by at most
  ``2 · lr · Σ_t A_t`` (plus weight decay's ``lr · wd · |θ|`` per step);
* in norm: the entries that rounding can flip carry (nearly) no gradient, so the
  difference of the two runs is a small share of the update ``θ_T − θ_0`` itself.

:func:`assert_adam_params_close` checks both; moments and losses are compared with
ordinary float tolerances by the callers.
"""

import jax
import numpy as np


def adam_step_bound(steps: int, b1: float = 0.9, b2: float = 0.999) -> float:
  """``Σ_{t ≤ steps} A_t``, ``A_t = max |m̂_t / √v̂_t|`` over all gradient sequences."""
  total = 0.0
  for t in range(1, steps + 1):
    i = np.arange(1, t + 1)
    a = (1 - b1) * b1 ** (t - i) / (1 - b1 ** t)
    b = (1 - b2) * b2 ** (t - i) / (1 - b2 ** t)
    total += float(np.sqrt(np.sum(a * a / b)))
  return total


def assert_adam_params_close(got, want, initial, lr: float, steps: int,
                             weight_decay: float = 0.0, share: float = 1e-2) -> None:
  """``got`` and ``want`` (parameter pytrees after ``steps`` Adam steps from ``initial``)
  agree as far as float order allows: every entry within Adam's step bound, and
  ``‖got − want‖₂ ≤ share · ‖want − initial‖₂``."""
  got, want, initial = (
      [np.asarray(a, np.float64) for a in jax.tree.leaves(t)] for t in (got, want, initial))
  assert len(got) == len(want) == len(initial)
  scale = max(float(np.max(np.abs(w))) for w in want)
  bound = 2 * lr * adam_step_bound(steps) + 2 * lr * weight_decay * steps * scale
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
  assert worst <= bound * 1.001, (worst, bound)
  diff = np.sqrt(sum(float(np.sum((g - w) ** 2)) for g, w in zip(got, want)))
  moved = np.sqrt(sum(float(np.sum((w - i) ** 2)) for w, i in zip(want, initial)))
  assert moved > 0 and diff <= share * moved, (diff, moved)
