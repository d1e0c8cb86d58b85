"""The one chooser of how stage 1's programs run, from their compiled memory.

:func:`pick_strategy` picks how the C stacked experts train (``vmap`` of all C, ``vmap``
in chunks, ``map``, ``map`` over microbatches; :func:`strategy_candidates`) and
:func:`fitting_batch` the loss table's batch: both from compiled memory against
:func:`memory_budget_bytes`, whether the devices are real (the trainer,
:mod:`reducr_jax.train.stage1_trainer`, and :mod:`reducr_jax.train.references`) or an abstract
topology (the planner, :mod:`reducr_jax.plan` / :mod:`reducr_jax.plan.plan_programs`). A
program that does not fit XLA:TPU's HBM fails to compile (``RESOURCE_EXHAUSTED``); that
counts as "does not fit", with the size the compiler reported.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from absl import logging
import ml_collections

from reducr_jax.train import chips
from reducr_jax.train import device_memory
from reducr_jax.core import errors
from reducr_jax.core import stacked_experts
from reducr_jax.train import topology


# XLA:CPU: a forward pass's rows per second do not grow with the batch past a few dozen
# rows, and on CPU every byte of its activations is host RAM the process shares.
# ``benchmarks/table_batch.py`` (2026-12-07; ResNet-18 at 224 px, 14 classes, 2 stacked
# experts, ``map``, one CPU device, 3 interleaved rounds on 2 shared cores): rows/s at
# 8, 16, 32, 64, 128 rows = 1.14, 1.27, 1.26, 1.14, 1.00 × the 128-row rate, workspace
# 82, 122, 202, 361, 680 MiB (≈ 5 MiB a row). So on CPU the loss table's batch also keeps
# its workspace (peak − arguments) under this; the 14-expert Clothing1M smoke table had
# taken 280 rows against the 2.94 GiB budget, now 70.
CPU_FORWARD_WORKSPACE_BYTES = 0.5 * device_memory.GIB


def forward_workspace_bytes(device: Any) -> Optional[float]:
  """The most non-argument bytes a forward-only pass (the loss table) may take per
  device: :data:`CPU_FORWARD_WORKSPACE_BYTES` on CPU, ``None`` (only the memory budget)
  on accelerators, whose HBM is the program's alone and whose rate grows with the batch."""
  return CPU_FORWARD_WORKSPACE_BYTES if getattr(device, "platform", "cpu") == "cpu" else None


class NothingFits(errors.ConfigError):
  """No strategy (or batch) of a program fits the device memory; ``str(e)`` is one line
  naming the program, its peak, the limit and what would fit."""


class DoesNotFit:
  """Stands in for a compiled program the compiler refused (out of HBM)."""

  def __init__(self, needed: float, available: float, message: str):
    self.needed, self.available, self.message = needed, available, message

  def memory_analysis(self):
    raise RuntimeError(self.message)


def compile_or_refusal(lowered_fn: Callable[[], Any]) -> Any:
  """``lowered_fn()`` (a ``.lower(...).compile()``), or a :class:`DoesNotFit` when the
  compiler ran out of device memory (other errors propagate)."""
  try:
    return lowered_fn()
  except Exception as e:  # pylint: disable=broad-except  (XLA raises JaxRuntimeError)
    sizes = topology.parse_out_of_memory(str(e))
    if sizes is None:
      raise
    return DoesNotFit(sizes[0], sizes[1], str(e).splitlines()[0])


def peak_bytes(compiled: Any) -> tuple[float | None, float]:
  """``(peak, argument bytes)`` per device of a compiled program (``peak`` ``None`` when
  the backend has no memory analysis; a refusal's peak is what the compiler needed)."""
  if isinstance(compiled, DoesNotFit):
    return compiled.needed, 0.0
  mem = device_memory.compiled_memory(compiled)
  return mem.get("peak"), float(mem.get("argument", 0))


def nothing_fits_message(program: str, peak: float, argument: float, limit: float,
                         batch: int, chips: int, field: str) -> str:
  """One line: the program, its peak and the limit, and what would fit (more chips or a
  smaller batch, estimated as the non-argument memory scaling with the batch per chip)."""
  gib = device_memory.GIB
  line = (f"{program} does not fit: its smallest strategy needs {peak / gib:.2f} GiB per "
          f"chip > the limit {limit / gib:.2f} GiB;")
  rest = peak - argument
  if argument >= limit or rest <= 0:
    return line + (f" its state alone is {argument / gib:.2f} GiB: it needs chips with "
                   f"more memory")
  share = (limit - argument) / rest        # of today's per-chip batch that would fit
  smaller = max(1, int(batch * share))
  more = max(chips + 1, int(-(-chips // share)))
  return line + (f" about {smaller} examples per chip would fit: {field} ≤ "
                 f"{smaller * chips}, or ≥ {more} chips")


def strategy_candidates(num: int, strategy: str, chunk: int, batch: int = 1,
                        backend: str | None = None) -> list[tuple[str, int, int]]:
  """``(strategy, chunk, microbatches)`` for C = ``num`` stacked experts, best first.

  An explicit ``strategy`` is the one candidate. ``auto``: on CPU ``map`` (conv nets:
  ``vmap`` lowers to grouped convolutions, several times slower and C× the activation
  memory, see :func:`reducr_jax.core.stacked_experts.default_strategy`); on GPU/TPU ``vmap``
  of all C, then chunks of the largest divisor of C ≤ C/2, C/4, … (≥ 2 experts per
  ``vmap``; a divisor, so :func:`reducr_jax.train.experts_step.experts_train_step` updates the
  chunks in place), then ``map`` (one at a time); then, when even one expert's step is
  too big, ``map`` with its gradient accumulated over 2, 4, 8, … slices of the per-device
  ``batch`` (``microbatches`` of :func:`reducr_jax.train.experts_step.experts_train_step`; batch
  norm then sees slices).
  """
  if strategy != "auto":
    return [(strategy, int(chunk), 1)]
  out = [("map", 0, 1)]
  if stacked_experts.default_strategy(backend) != "map" and num > 1:
    out, target = [("vmap", 0, 1)], num // 2
    while target >= 2:   # the largest divisor of C ≤ C/2, C/4, …: chunks update in place
      width = max(d for d in range(1, target + 1) if num % d == 0)
      if width >= 2 and ("vmap", width, 1) not in out:
        out.append(("vmap", width, 1))
      target //= 2
    out.append(("map", 0, 1))
  m = 2
  while batch % m == 0:
    out.append(("map", 0, m))
    m *= 2
  return out


def stage1_candidates(config: ml_collections.ConfigDict, kind: str, num: int,
                      b_local: int, backend: str) -> list[tuple[str, int, int]]:
  """The stage-1 strategies to try on ``backend``, best first (one for multihead)."""
  if kind == "multihead":
    return [("map", 0, 1)]
  return strategy_candidates(num, config.experts.strategy, config.experts.chunk, b_local,
                             backend)


def strategy_line(kind: str, num: int, candidate: tuple[str, int, int], configured: str,
                  devices: int, peak: Optional[float], budget: float) -> str:
  """The stage-1 line that says how the reference models train, printed by default:
  ``'stage 1: 14 experts with map (auto), 2 microbatches, 1 device, compiled peak
  1.23 GiB per device (budget 2.94 GiB)'``."""
  strategy, chunk, micro = candidate
  what = "1 multi-head model" if kind == "multihead" else (
      f"{num} {'experts' if kind == 'experts' else 'irreducible-loss model'}")
  how = strategy + (f" in chunks of {chunk}" if strategy == "vmap" and 0 < chunk < num else "")
  how += f" ({configured})" if configured == "auto" else ""
  if kind == "multihead":
    how = "one program"
  mem = ("" if peak is None else f", compiled peak {peak / device_memory.GIB:.3g} GiB per "
         f"device (budget {budget / device_memory.GIB:.3g} GiB)")
  return (f"stage 1: {what} with {how}"
          + (f", {micro} microbatches" if micro > 1 else "")
          + f", {devices} device{'s' if devices != 1 else ''}{mem}")


def models_in_flight(num: int, strategy: str, chunk: int) -> int:
  """How many of the C models' activations one step holds at once."""
  if strategy == "vmap":
    return num if chunk in (0, None) or chunk >= num else int(chunk)
  return 1


def pick_strategy(compile_fn: Callable[[str, int, int], Any], num: int,
                  candidates: list[tuple[str, int, int]], budget_bytes: float,
                  strict: bool = False, program: str = "stage1_expert_step",
                  batch: int = 0, chips: int = 1):
  """The first candidate whose compiled step fits the memory budget.

  The one chooser of the stage-1 strategy: the trainer calls it on its devices, the
  planner (:mod:`reducr_jax.plan`) on an abstract topology, with the same candidates. A
  compile that XLA refuses for lack of device memory (XLA:TPU: ``RESOURCE_EXHAUSTED``)
  is a candidate that does not fit (:func:`reducr_jax.compile_or_refusal`).

  Args:
    compile_fn: ``(strategy, chunk, microbatches) -> compiled program``
      (``.lower(...).compile()``).
    num: C, the stacked experts.
    candidates: :func:`strategy_candidates`, best first.
    budget_bytes: device bytes the step may use. The target model's own step must fit
      next to it; it is estimated as one model's share of the candidate's arguments
      (the stacked state: ``/ C``) plus of the rest (activations: ``/ models in flight``).
    strict: when nothing fits, raise :class:`reducr_jax.NothingFits` (one
      line: ``program``, its peak, the limit and what would fit, from the per-device
      ``batch`` over ``chips`` devices) instead of returning the last candidate.

  Returns:
    ``(candidate, compiled, peak_bytes)``; the last candidate when none fits (or the only
    one), ``peak_bytes`` ``None`` where the backend reports no memory analysis.
  """
  def need_of(cand, peak, state):   # + one model's share of the state and the rest
    return peak + state / num + (peak - state) / models_in_flight(num, *cand[:2])

  measured = {}    # (strategy, chunk) -> (microbatches, peak, argument bytes)
  for i, cand in enumerate(candidates):
    # Skip, without compiling, a microbatch count that cannot fit even if everything but
    # the arguments shrank as 1/microbatches (it shrinks less: the state's updates do
    # not): each compile of a full ResNet costs 15-80 s on 2 CPU cores.
    seen = measured.get(cand[:2])
    if seen is not None and i < len(candidates) - 1:
      m0, peak0, state0 = seen
      guess = state0 + (peak0 - state0) * m0 / cand[2]
      if need_of(cand, guess, state0) > budget_bytes:
        logging.info("stage 1: %s needs at least %.2f GB > budget %.2f GB; not compiled",
                     cand, need_of(cand, guess, state0) / device_memory.GIB,
                     budget_bytes / device_memory.GIB)
        continue
    compiled = compile_or_refusal(lambda cand=cand: compile_fn(*cand))
    peak, state = peak_bytes(compiled)
    refused = isinstance(compiled, DoesNotFit)
    need = None
    if peak is not None:
      need = peak if refused else need_of(cand, peak, state)
      if not refused:
        measured[cand[:2]] = (cand[2], peak, state)
    if not refused and (need is None or need <= budget_bytes):
      return cand, compiled, peak
    if i == len(candidates) - 1:
      if strict or refused:
        raise NothingFits(nothing_fits_message(
            program, need, state, budget_bytes, batch, chips, "config.experts.batch_size"))
      logging.warning("stage 1: no expert strategy fits %.2f GB (%s needs %.2f GB)",
                      budget_bytes / device_memory.GIB, cand, need / device_memory.GIB)
      return cand, compiled, peak
    logging.info("stage 1: %s needs %.2f GB > budget %.2f GB; trying the next", cand,
                 need / device_memory.GIB, budget_bytes / device_memory.GIB)
  raise ValueError("no strategy candidates")


def fitting_batch(compile_at: Callable[[int], Any], batch: int, multiple_of: int,
                  budget_bytes: float, strict: bool = False,
                  program: str = "loss_table",
                  workspace_bytes: Optional[float] = None) -> tuple[int, Any]:
  """``(b, compile_at(b))`` for the largest ``b`` of ``batch``, ``batch/2``, …
  (multiples of ``multiple_of``) whose compiled program fits the per-device budget (the
  smallest when none does, or with ``strict`` a one-line
  :class:`reducr_jax.NothingFits`; ``batch`` where the backend reports no
  memory analysis). A compile refused for lack of memory does not fit. With
  ``workspace_bytes`` (:func:`forward_workspace_bytes`) the program's non-argument
  bytes must also stay under it (not an error when even the smallest batch exceeds it).

  For forward-only passes (the loss table): their memory is the models' parameters plus
  the activations of one batch, and a 500-image ResNet-18 forward at 224 px needs ≈ 5 GiB.
  """
  def fits_limits(peak, state):
    return (peak is None or peak <= budget_bytes) and (
        workspace_bytes is None or peak is None or peak - state <= workspace_bytes)

  b = batch
  while True:
    compiled = compile_or_refusal(lambda b=b: compile_at(b))
    peak, state = peak_bytes(compiled)
    refused = isinstance(compiled, DoesNotFit)
    fits_budget = not refused and (peak is None or peak <= budget_bytes)
    fits = not refused and fits_limits(peak, state)
    smaller = (b // 2) // multiple_of * multiple_of
    # Skip, without compiling, the halvings that cannot fit even if everything but the
    # arguments shrank in proportion to the batch (it shrinks less: a forward's fixed
    # workspace does not), so the choice is the one halving one by one would make. A
    # refusal reports only its peak: nothing is skipped after one. (Each compile of the
    # 14-expert ResNet-18 table costs ≈ 20 s on 2 CPU cores.)
    if not fits and not refused and peak is not None:
      while smaller // 2 // multiple_of >= 1 and not fits_limits(
          state + (peak - state) * smaller / b, state):
        logging.info("reference-loss table: batch %d would need at least %.2f GB; not "
                     "compiled", smaller,
                     (state + (peak - state) * smaller / b) / device_memory.GIB)
        smaller = (smaller // 2) // multiple_of * multiple_of
    if fits or smaller < multiple_of:
      if not fits_budget and (strict or refused):
        raise NothingFits(nothing_fits_message(
            program, peak, state, budget_bytes, b // multiple_of, multiple_of,
            "config.eval_batch_size"))
      if b != batch:
        logging.info("reference-loss table: batch %d (of %d), compiled peak %.2f GB "
                     "(%.2f GB beyond its arguments), budget %.2f GB per device%s", b, batch,
                     (peak or 0) / device_memory.GIB, ((peak or 0) - state) / device_memory.GIB,
                     budget_bytes / device_memory.GIB,
                     "" if workspace_bytes is None else
                     f", workspace {workspace_bytes / device_memory.GIB:.2f} GB")
      return b, compiled
    b = smaller


def memory_budget_bytes(config: ml_collections.ConfigDict, device: Any) -> float:
  """``config.experts.max_memory_gb`` in bytes, or (``0``) what ``device`` has: an
  abstract device of a topology (:mod:`reducr_jax.train.topology`, no memory stats) has its
  chip's program limit (:mod:`reducr_jax.train.chips`)."""
  gb = float(config.experts.max_memory_gb or 0.0)
  if gb > 0:
    return gb * device_memory.GIB
  if getattr(device, "platform", "cpu") != "cpu":
    try:
      device.memory_stats()
    except Exception:  # pylint: disable=broad-except  (not addressable: abstract device)
      return float(chips.get(device.device_kind).memory_limit_bytes)
  return float(device_memory.device_capacity_bytes(device))
