"""Dataset corruptions used by the robustness experiments: pure NumPy, explicit RNG.

* Class imbalance (REDUCR paper, section 5.3): one class is subsampled so that it makes
  up a chosen fraction of a split.
* Symmetric label noise (``config.dataset.label_noise_mode``): ``'different'`` (default):
  each label is, with probability ``rate``, replaced by a uniformly drawn *different*
  class; ``'any'`` (official REDUCR code, ``src/datamodules/datamodules.py``
  ``_corrupt_dataset``): exactly ``int(N · rate)`` rows, drawn without replacement, get a
  label drawn uniformly from *all* C classes, so a redraw may keep the true label and the
  expected share of changed labels is ``int(N · rate)/N · (C − 1)/C``.
* Structured label noise (``label_noise_mode='structured'``, official ``structured_noise``
  of ``_corrupt_dataset``; ``trainset_corruption/structured_noise.yaml``, there rate 0.5
  on MNIST variants only): a fixed class-to-class flip map, :func:`structured_label_noise`.
* The official weighted sampler (``imbalance_mode='weighted_sampler'``,
  ``src/datamodules/datasets/imbalanced_dataloader.py``): :func:`sampler_probabilities`.
"""

from __future__ import annotations

import numpy as np


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def imbalance_mask(
    y: np.ndarray,
    cls: int,
    fraction: float,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> np.ndarray:
  """Which rows survive subsampling class ``cls`` down to ``fraction`` of the split.

  With ``N_rest`` the number of examples of the other classes, a random subset of
  ``n = round(fraction * N_rest / (1 - fraction))`` examples of ``cls`` is kept (halves
  round up), clipped to ``[1, count of cls]``: a ``fraction`` at or above the class's
  natural share (including ``fraction == 1``) keeps the whole class. Other classes are
  untouched.

  Args:
    y: int labels [N].
    cls: the class to subsample, or -1 for no change (all True, ``rng`` not used).
    fraction: target share of ``cls`` in the returned split, in (0, 1].
    rng: the generator drawing which examples of ``cls`` are kept.
    num_classes: bounds ``cls``; defaults to ``y.max() + 1``.

  Returns:
    bool [N], True for rows to keep.
  """
  y = np.asarray(y)
  if num_classes is None:
    num_classes = int(y.max()) + 1 if y.size else 0
  if not _is_int(cls) or not -1 <= cls < num_classes:
    raise ValueError(f"config.dataset.imbalance_class must be -1 (none) or an int in "
                     f"[0, {num_classes}), got {cls!r}")
  if not 0.0 < float(fraction) <= 1.0:
    raise ValueError(f"config.dataset.imbalance_fraction must be in (0, 1], got {fraction!r}")
  keep = np.ones(y.shape, dtype=bool)
  if cls == -1:
    return keep
  members = np.flatnonzero(y == cls)
  if float(fraction) >= 1.0:
    return keep
  n_rest = y.size - members.size
  n_keep = int(np.floor(fraction * n_rest / (1.0 - fraction) + 0.5))
  n_keep = min(max(n_keep, 1), members.size)
  dropped = rng.choice(members, size=members.size - n_keep, replace=False)
  keep[dropped] = False
  return keep


def imbalance_class(
    x: np.ndarray,
    y: np.ndarray,
    cls: int,
    fraction: float,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Subsamples class ``cls`` to ``fraction`` of the split (see ``imbalance_mask``).

  Args:
    x: features [N, ...], any dtype.
    y: int labels [N].
    cls, fraction, rng, num_classes: as in ``imbalance_mask``.

  Returns:
    ``(x[keep], y[keep])``, rows in their original relative order.
  """
  keep = imbalance_mask(y, cls, fraction, rng, num_classes)
  return np.asarray(x)[keep], np.asarray(y)[keep]


def _checked_labels(y, rate: float, num_classes: int) -> np.ndarray:
  """``y`` as an array, after the one-line checks both label-noise variants share."""
  y = np.asarray(y)
  if not 0.0 <= float(rate) <= 1.0:
    raise ValueError(f"config.dataset.label_noise must be in [0, 1], got {rate!r}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}), got range "
                     f"[{y.min()}, {y.max()}]")
  return y


def symmetric_label_noise(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
  """Replaces each label, with probability ``rate``, by a uniformly drawn other class.

  Args:
    y: int labels [N] in [0, num_classes).
    rate: flip probability in [0, 1].
    num_classes: number of classes (>= 2 when ``rate > 0``).
    rng: the generator drawing which labels flip and to what.

  Returns:
    ``(y_noisy, flipped)``: y_noisy [N] with ``y``'s dtype, and bool [N] flipped,
    which equals ``y_noisy != y`` (a flipped label never lands on its own class).
  """
  y = _checked_labels(y, rate, num_classes)
  if rate > 0 and num_classes < 2:
    raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
  flipped = rng.random(y.shape) < rate
  # An offset in [1, num_classes) modulo num_classes is uniform over the other classes.
  offset = rng.integers(1, max(num_classes, 2), size=y.shape)
  y_noisy = np.where(flipped, (y + offset) % num_classes, y).astype(y.dtype)
  return y_noisy, flipped


LABEL_NOISE_MODES = ("different", "any", "structured")
# The official structured flips, applied in this order (source -> target); the official
# comment says "3 --> 5, 4 --> 5, 9 --> 7", the code flips 4 to 9 (after 9 -> 7, so the
# new 9s stay).
STRUCTURED_FLIPS = ((3, 5), (9, 7), (4, 9))


def uniform_label_noise(
    y: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
  """The official REDUCR label noise: ``int(N · rate)`` rows relabelled uniformly over all classes.

  Official: ``src/datamodules/datamodules.py`` ``_corrupt_dataset``:
  ``n_corrupt = int(n_dataset * pc_corrupted)``, ``np.random.choice(n, n_corrupt,
  replace=False)`` rows, each given ``randint(n_classes)`` (the true class included).

  Args:
    y: int labels [N] in [0, num_classes).
    rate: share of rows redrawn, in [0, 1].
    num_classes: C (>= 2 when ``rate > 0``).
    rng: draws which rows are redrawn, then their new labels.

  Returns:
    ``(y_noisy, redrawn)``: y_noisy [N] with ``y``'s dtype; bool [N] redrawn (True on
    the ``int(N · rate)`` redrawn rows, also where the redraw kept the true label; the
    labels that changed are ``y_noisy != y``).
  """
  y = _checked_labels(y, rate, num_classes)
  n_corrupt = int(y.size * float(rate))
  rows = rng.choice(y.size, size=n_corrupt, replace=False)
  y_noisy = y.copy()
  y_noisy[rows] = rng.integers(0, num_classes, size=n_corrupt)
  redrawn = np.zeros(y.shape, bool)
  redrawn[rows] = True
  return y_noisy.astype(y.dtype), redrawn


def structured_label_noise(y: np.ndarray, rate: float,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """The official structured noise: class 3 → 5, then 9 → 7, then 4 → 9.

  Official ``_corrupt_dataset(structured_noise=True)``: for each ``(source, target)`` of
  :data:`STRUCTURED_FLIPS` in turn, the *first* ``int(n_source · rate)`` rows (in row
  order, no randomness) whose current label is ``source`` get ``target``. Labels of other
  classes never change.

  Args:
    y: int labels [N] in [0, num_classes); num_classes must be >= 10.
    rate: share of each source class flipped, in [0, 1].

  Returns:
    ``(y_noisy, flipped)``: y_noisy [N] with ``y``'s dtype; bool [N], True where changed.
  """
  y = _checked_labels(y, rate, num_classes)
  if num_classes < 10:
    raise ValueError(f"config.dataset.label_noise_mode='structured' flips classes 3, 4, 9 "
                     f"into 5, 9, 7 and needs >= 10 classes, got {num_classes}")
  y_noisy = y.copy()
  for source, target in STRUCTURED_FLIPS:
    rows = np.flatnonzero(y_noisy == source)
    y_noisy[rows[:int(rows.size * float(rate))]] = target
  return y_noisy, y_noisy != y


def label_noise(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator,
                mode: str = "different") -> np.ndarray:
  """Noisy labels [N] of ``mode`` (``LABEL_NOISE_MODES``); see the module docstring."""
  if mode == "different":
    return symmetric_label_noise(y, rate, num_classes, rng)[0]
  if mode == "any":
    return uniform_label_noise(y, rate, num_classes, rng)[0]
  if mode == "structured":
    return structured_label_noise(y, rate, num_classes)[0]
  raise ValueError(f"config.dataset.label_noise_mode must be one of "
                   f"{list(LABEL_NOISE_MODES)}, got {mode!r}")


def sampler_class_weights(num_classes: int, cls: int, fraction: float) -> np.ndarray:
  """float64 [C]: the official ``ImbalancedSamplerFactory`` class weights.

  ``w[cls] = fraction``, every other class ``(1 − fraction) / (C − 1)`` (official
  ``src/datamodules/datasets/imbalanced_dataloader.py``; they sum to 1). ``cls == -1``:
  all ones (no imbalance).
  """
  if cls == -1:
    return np.ones(num_classes)
  w = np.full(num_classes, (1.0 - float(fraction)) / (num_classes - 1))
  w[cls] = float(fraction)
  return w


def sampler_probabilities(y: np.ndarray, cls: int, fraction: float,
                          num_classes: int) -> np.ndarray:
  """float64 [N]: per-example draw probabilities of the official weighted sampler.

  The official ``ImbalancedDatasetSampler`` gives example i the weight ``w[y_i]`` of
  :func:`sampler_class_weights` and draws ``torch.multinomial(weights, N,
  replacement=True)``, i.e. ``p_i = w[y_i] / Σ_j w[y_j]``. Class c is then drawn with
  probability ``w_c n_c / Σ_d w_d n_d``: exactly ``fraction`` for ``cls`` when the classes
  are equally frequent (CIFAR-10, the paper's §5.3 setting); otherwise it also scales
  with the class sizes (as the official code does).
  """
  y = np.asarray(y)
  w = sampler_class_weights(num_classes, cls, fraction)[y]
  total = w.sum()
  if total <= 0:
    raise ValueError("sampler_probabilities: every example has weight 0 (the split holds "
                     "only the imbalanced class and config.dataset.imbalance_fraction is 0)")
  return w / total
