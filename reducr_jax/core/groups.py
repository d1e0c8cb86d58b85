"""Class groups: the unit REDUCR is robust over when it is not the single class.

``config.dataset.groups`` (official REDUCR: ``selection_method.num_categories``, e.g. 20
for CIFAR-100 in ``configs/experiment/cifar100_resnet18_robust.yaml``):

* ``()`` (default): every class is its own group (G = C), the paper's setting;
* a tuple of C ints: ``group_of[c]`` is the group of class c, groups ``0 … G−1`` all used;
* ``"cifar100_superclasses"``: the 20 coarse CIFAR-100 superclasses (the official code's
  ``indices_CIFAR100.superclass`` table in
  ``src/datamodules/datasets/sequence_datasets.py``; TFDS ``cifar100`` ``coarse_label``
  and the CIFAR ``coarse_labels`` field use the same numbering).

Pure NumPy; ``group_labels`` also works on ``jax.Array`` labels (it is one gather).
"""

from __future__ import annotations

import numpy as np

from reducr_jax.core import checks

# Fine label -> coarse label of CIFAR-100 (fine labels in the alphabetical order of
# ``fine_label_names``, as TFDS and torchvision number them).
CIFAR100_SUPERCLASSES = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
CIFAR100_SUPERCLASS_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")
NAMED = {"cifar100_superclasses": CIFAR100_SUPERCLASSES}


def validate_groups(groups, num_classes: int) -> None:
  """Raises a one-line ``ValueError`` unless ``groups`` is a valid ``config.dataset.groups``."""
  if isinstance(groups, str):
    if groups not in NAMED or len(NAMED[groups]) != num_classes:
      fits = [n for n, g in NAMED.items() if len(g) == num_classes]
      raise ValueError(f"config.dataset.groups must be () (one group per class), a tuple of "
                       f"{num_classes} group ids, or one of {fits} for {num_classes} "
                       f"classes, got {groups!r}")
    return
  g = tuple(groups) if isinstance(groups, (tuple, list)) else None
  if g == ():
    return
  if (g is None or len(g) != num_classes or not all(checks.is_int(v) and v >= 0 for v in g)
      or set(g) != set(range(max(g) + 1)) or max(g) < 1):
    raise ValueError(f"config.dataset.groups must be () (one group per class), a string "
                     f"{sorted(NAMED)} or {num_classes} ints using every group id 0..G-1 "
                     f"(G >= 2), got {groups!r}")


def group_of(groups, num_classes: int) -> np.ndarray:
  """int32 [C]: the group of every class (``arange(C)`` for ``()``)."""
  validate_groups(groups, num_classes)
  if isinstance(groups, str):
    return np.asarray(NAMED[groups], np.int32)
  if tuple(groups) == ():
    return np.arange(num_classes, dtype=np.int32)
  return np.asarray(tuple(groups), np.int32)


def num_groups(groups, num_classes: int) -> int:
  """G: the number of groups (C for ``()``)."""
  return int(group_of(groups, num_classes).max()) + 1


def group_labels(labels, group_of_class):
  """``group_of_class[labels]``: labels [n] -> group labels [n] (NumPy or JAX arrays, also
  under ``jit``); ``group_of_class`` ``None`` or empty (no groups) returns ``labels``."""
  if group_of_class is None or len(group_of_class) == 0:
    return labels
  if isinstance(labels, np.ndarray):
    return np.asarray(group_of_class)[labels]
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # NumPy-only module otherwise
  return jnp.asarray(group_of_class, jnp.int32)[labels]


def group_names(groups, class_names) -> list[str]:
  """Names of the G groups: the class names for ``()``, the CIFAR-100 superclass names,
  else ``'group<g>'`` joined with its classes' names."""
  if isinstance(groups, str) and groups == "cifar100_superclasses":
    return list(CIFAR100_SUPERCLASS_NAMES)
  g = group_of(groups, len(class_names))
  if tuple(groups) == ():
    return list(class_names)
  return ["+".join(class_names[c] for c in np.flatnonzero(g == k))
          for k in range(int(g.max()) + 1)]


def from_config(dataset_config, num_classes: int) -> np.ndarray | None:
  """int32 [C] class → group of ``config.dataset.groups``, or ``None`` for ``()`` (every
  class its own group: the code paths of the ungrouped trainer, unchanged)."""
  groups = dataset_config.groups
  if not isinstance(groups, str) and tuple(groups) == ():
    return None
  return group_of(groups, num_classes)
