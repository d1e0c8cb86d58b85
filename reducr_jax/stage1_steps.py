"""Stage 1's device programs and the one chooser of how they run.

The pmapped expert training step and the validation sums of :mod:`reducr_jax.train_experts`
are built here from shapes and settings only, so the trainer (real arrays, real devices)
and the planner (:mod:`reducr_jax.plan`: ``ShapeDtypeStruct``s, an abstract TPU topology)
compile exactly the same programs.

:func:`choose` is the one function that picks how the C stacked experts run (``vmap`` of
all C, ``vmap`` in chunks, ``map``, ``map`` over microbatches) and :func:`fitting_batch`
the loss table's batch: both from compiled memory, whether the devices are real or an
abstract topology. A program that does not fit XLA:TPU's HBM fails to compile (``RESOURCE_
EXHAUSTED``); that counts as "does not fit", with the size the compiler reported.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from reducr_jax import device_memory
from reducr_jax import errors
from reducr_jax import experts
from reducr_jax import rng_streams
from reducr_jax import sharding
from reducr_jax import topology
from reducr_jax.data import augment as augment_lib
from reducr_jax.data import groups as groups_lib


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


def weighted_loss_sums(table: jax.Array, y: jax.Array, mask: jax.Array, gamma,
                        group_of=None) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e]) table[i, e]`` per column e → ``[E]`` (eq. 8 on val);
  with ``group_of`` (int [C]) ``y_i`` is replaced by its group."""
  w = experts.class_weight_matrix(groups_lib.group_labels(y, group_of), table.shape[1],
                                  gamma)
  return jnp.sum(w * table * mask[:, None], axis=0)


def weight_sums(y: jax.Array, mask: jax.Array, num: int, gamma,
                 group_of=None) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e])`` per column e → ``[num]`` (``"weight_sum"``; with
  ``group_of`` ``y_i`` is replaced by its group)."""
  w = experts.class_weight_matrix(groups_lib.group_labels(y, group_of), num, gamma)
  return jnp.sum(w * mask[:, None], axis=0)


def step_functions(config: Any, kind: str, fns, num_classes: int,
                   gamma: float, n: int, canonical_convs: bool | None = None):
  """One device's stage-1 functions under a ``pmap`` over ``n`` devices (all processes).

  Returns ``(tx, train_step, val_sums)``:
    ``train_step(state, x [b, ...], y int[b], step, strategy, chunk, microbatches)`` →
    ``(state, losses [num])`` with ``b = config.experts.batch_size / n``;
    ``val_sums(variables, x, y, mask, strategy, chunk, slices)`` → the ``psum`` over all
    devices of each model's eq.-8 loss sums and weight sums ``([num], [num])``.
  ``canonical_convs``: :func:`reducr_jax.experts.train_step`'s: ``True`` when compiling for
  CPU devices (``None``: when the default backend is CPU).
  """
  ex = config.experts
  norm = ex.loss_normalisation
  tx = optax.adamw(ex.learning_rate, weight_decay=ex.weight_decay)
  rng = rng_streams.key(config.seed, "expert_init")
  augment_key = rng_streams.key(config.seed, "expert_augment")
  aug_kind = config.dataset.augment
  b_local = ex.batch_size // n
  group_of = groups_lib.from_config(config.dataset, num_classes)

  def train_step(state, x, y, step, strategy, chunk, microbatches):
    """One device's step: x [b_local, ...], y int[b_local], step int scalar."""
    d = jax.lax.axis_index(sharding.AXIS)
    key = jax.random.fold_in(augment_key, step)
    x = augment_lib.augment(key, x, d * b_local + jnp.arange(b_local), aug_kind)
    dropout = jax.random.fold_in(rng, step)
    if n > 1:        # independent dropout masks per device (1 device: as before)
      dropout = jax.random.fold_in(dropout, d)
    if kind == "multihead":
      p, o, loss, ms = experts.multihead_train_step(
          fns.apply, tx, state.params, state.opt_state, x, y, gamma,
          model_state=state.model_state, train_apply_fn=fns.apply_train, rng=dropout,
          axis_name=sharding.AXIS, group_of=group_of, normalisation=norm)
      return experts.ExpertsState(p, o, ms), loss[None]
    return experts.train_step(fns.apply, tx, state, x, y, gamma,
                              train_apply_fn=fns.apply_train, rng=dropout,
                              strategy=strategy, chunk=chunk, axis_name=sharding.AXIS,
                              microbatches=microbatches, group_of=group_of,
                              normalisation=norm, canonical_convs=canonical_convs)

  def val_sums(variables, x, y, mask, strategy, chunk, slices):
    """Σ over all devices' rows of each model's eq. 8 loss on the selection split →
    ``[num]``, and (``"weight_sum"``) the weight sums ``[num]`` (per head for multihead)."""
    if kind == "multihead":
      table = experts.multihead_expert_losses(fns.apply(variables, x), y)
      sums = weighted_loss_sums(table, y, mask, gamma, group_of)  # [C] heads
      if norm == "mean":
        sums = jnp.mean(sums, keepdims=True)
      wsums = weight_sums(y, mask, table.shape[1], gamma, group_of)
    else:       # in `slices` slices of the batch, like the training step's microbatches
      table = jax.lax.map(
          lambda xy: experts.expert_losses(fns.apply, variables, *xy, strategy, chunk),
          (x.reshape((slices, -1) + x.shape[1:]), y.reshape((slices, -1))))
      table = table.reshape((-1, table.shape[-1]))                    # [b, num]
      sums = weighted_loss_sums(table, y, mask, gamma, group_of)
      wsums = weight_sums(y, mask, table.shape[1], gamma, group_of)
    return jax.lax.psum((sums, wsums), sharding.AXIS)

  return tx, train_step, val_sums


def pmapped(fn, devices, donate=()):
  """``(strategy, chunk, **kw) -> jax.pmap(fn with those bound)`` over ``devices``
  (``None``: every device of every process)."""
  return lambda strategy, chunk, **kw: jax.pmap(
      functools.partial(fn, strategy=strategy, chunk=chunk, **kw), axis_name=sharding.AXIS,
      devices=devices, donate_argnums=donate)


def validation_batch(config: Any, kind: str, n: int, b_local: int,
                     microbatches: int, split_len: int) -> tuple[int, int]:
  """``(rows per device, slices)`` of the validation sums: no larger than the split needs,
  evaluated in slices of the training step's microbatch size (the training step was
  fitted to the memory budget; a 500-image ResNet-18 forward at 224 px is ≈ 5 GiB)."""
  eval_local = -(-min(config.eval_batch_size, split_len) // n)
  slice_rows = b_local // microbatches if microbatches > 1 and kind != "multihead" \
      else eval_local
  eval_local = -(-eval_local // slice_rows) * slice_rows
  return eval_local, eval_local // slice_rows


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
