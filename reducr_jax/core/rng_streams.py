"""The named random streams of a run: one split of the run's key, one stream per use.

Every random choice of a run (trainer, reference models, pruning scores) comes from one of
the streams below, derived from ``config.seed`` alone:

* JAX keys: ``key(seed, name)`` is row ``NAMES.index(name)`` of
  ``jax.random.split(jax.random.PRNGKey(seed), len(NAMES))``; a stream that needs one key
  per step folds the step in (``jax.random.fold_in(key(seed, name), step)``).
* NumPy orders (which examples form a batch, drawn on the host): ``order_seed(seed, name)``
  is the entropy ``(seed, NAMES.index(name) + 1)`` of a :class:`numpy.random.SeedSequence`;
  :func:`reducr_jax.data.sampling.batch_indices` draws epoch ``e``'s permutation from
  ``default_rng([*order_seed, e])``.

So two uses never share randomness by accident (before, streams were ``seed + 1``,
``seed + 7``, ``seed + 1_000_003`` …, and seed s's ``+ 1`` stream was seed s + 1's main
one), adding a stream changes no other stream, and a stream's name says what it drives.
The data splits (which row lands in train / holdout / val / test, imbalance, label noise)
are drawn in :mod:`reducr_jax.data.splits` from ``SeedSequence(seed).spawn(...)``, the same
idea on the NumPy side.

Streams (append new names at the end: the index is part of the stream):

============================  ===========================================================
``target_init``               the target model's initial parameters
``selection``                 the selector's randomness (soft top-k, sampled selection),
                              ``fold_in`` the step
``train_order``               the order of the train split (the large batches)
``holdout_order``             holdout batches of the EMA class-holdout loss
``validation_order``          the meta-reweighting validation batches
``expert_init``               the reference models' initial parameters, dropout
``expert_augment``            the augmentation of the reference models' batches
``expert_order``              the order of the holdout split for the reference models
``pruning_init``              the pruning scoring run's models, dropout
``pruning_order``             the scoring run's batch order
``pruning_random``            random pruning / DRoP's random draw within quotas
============================  ===========================================================
"""

from __future__ import annotations

import functools

import jax

NAMES = (
    "target_init",
    "selection",
    "train_order",
    "holdout_order",
    "validation_order",
    "expert_init",
    "expert_augment",
    "expert_order",
    "pruning_init",
    "pruning_order",
    "pruning_random",
)


def _index(name: str) -> int:
  if name not in NAMES:
    raise ValueError(f"rng stream must be one of {list(NAMES)}, got {name!r}")
  return NAMES.index(name)


@functools.lru_cache(maxsize=64)
def _split(seed: int) -> jax.Array:
  with jax.ensure_compile_time_eval():      # a concrete array even when called under jit
    return jax.random.split(jax.random.PRNGKey(seed), len(NAMES))


def key(seed: int, name: str) -> jax.Array:
  """The JAX key (``uint32[2]``) of stream ``name`` of run seed ``seed``."""
  i = _index(name)
  return _split(int(seed))[i]


def order_seed(seed: int, name: str) -> tuple[int, int]:
  """The NumPy seed ``(seed, stream index + 1)`` of host-side order stream ``name``."""
  return (int(seed), _index(name) + 1)
