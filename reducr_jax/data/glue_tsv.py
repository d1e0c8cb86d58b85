"""MNLI and QQP from the GLUE release as distributed (``MNLI/*.tsv``, ``QQP/*.tsv``).

The GLUE download (``download_glue_data.py``, or the ``MNLI.zip`` / ``QQP.zip`` archives)
extracts to one folder per task:

* ``MNLI/train.tsv``, ``dev_matched.tsv``, ``dev_mismatched.tsv``: columns ``index,
  promptID, pairID, genre, sentence1_binary_parse, sentence2_binary_parse,
  sentence1_parse, sentence2_parse, sentence1, sentence2, label1, [label2 … label5,]
  gold_label`` (dev files carry five annotator labels, train one);
* ``QQP/train.tsv``, ``dev.tsv``: ``id, qid1, qid2, question1, question2, is_duplicate``.

The files are read exactly as TFDS's ``glue`` builder (``tensorflow_datasets/text/glue.py``)
reads them, so that both sources give the same examples in the same order:

* ``csv.DictReader(delimiter="\\t", quoting=csv.QUOTE_NONE)``: quotes are ordinary
  characters (GLUE sentences contain unbalanced ``"``), a record is one line;
* the pair is (``sentence1``, ``sentence2``) for MNLI, (``question1``, ``question2``) for
  QQP; the label is ``gold_label`` by name in TFDS's order (entailment 0, neutral 1,
  contradiction 2) or ``is_duplicate`` as an int (0 not duplicate, 1 duplicate);
* a malformed row (a missing column, e.g. a QQP question that holds a tab or line break
  in the public release, or an empty/unknown label) is skipped and counted; TFDS
  drops the same rows;
* row order: TFDS writes a split sorted by ``md5(split name + str(record number))``
  (``tfds.core.hashing``, the split name as salt), and so do we: row ``i`` here is row
  ``i`` of the prepared TFDS split (``glue/mnli``/``glue/qqp`` 2.0.0).

Nothing here needs TensorFlow or TFDS.
"""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
from absl import logging

# task -> (folder in the GLUE release, {TFDS split name: file}, text columns,
#          label column, label names in TFDS order (None: the column holds ints))
TASKS = {
    "mnli": ("MNLI", {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                      "validation_mismatched": "dev_mismatched.tsv"},
             ("sentence1", "sentence2"), "gold_label",
             ("entailment", "neutral", "contradiction")),
    "qqp": ("QQP", {"train": "train.tsv", "validation": "dev.tsv"},
            ("question1", "question2"), "is_duplicate", None),
}


def task_dir(root: str, task: str) -> str | None:
  """The folder holding ``task``'s TSV files: ``root`` itself or ``root/MNLI`` (``QQP``;
  any case), or ``None`` when neither holds every file."""
  folder, files, *_ = TASKS[task]
  root = os.path.expanduser(root)
  for d in (os.path.join(root, folder), os.path.join(root, folder.lower()), root):
    if all(os.path.isfile(os.path.join(d, f)) for f in files.values()):
      return d
  return None


def expected_files(task: str) -> str:
  """``'MNLI/{train,dev_matched,dev_mismatched}.tsv'`` for messages."""
  folder, files, *_ = TASKS[task]
  return f"{folder}/{{{','.join(f[:-4] for f in files.values())}}}.tsv"


def tfds_order(split: str, num_records: int) -> np.ndarray:
  """int64 [n]: record numbers in the order TFDS writes split ``split`` (md5 of the split
  name as salt followed by the decimal record number, ascending)."""
  salted = hashlib.md5(split.encode("utf-8"))

  def key(n):
    h = salted.copy()
    h.update(str(n).encode("utf-8"))
    return h.digest()           # big-endian bytes sort like TFDS's int(hexdigest, 16)

  return np.asarray(sorted(range(num_records), key=key), dtype=np.int64)


def read_split(directory: str, task: str, split: str, max_examples: int = -1,
               file_order: bool = False):
  """One split of ``task`` from its TSV file.

  Args:
    directory: from :func:`task_dir`.
    task: ``"mnli"`` or ``"qqp"``.
    split: TFDS split name (``train``, ``validation_matched``, ``validation_mismatched``
      for MNLI; ``train``, ``validation`` for QQP).
    max_examples: -1 for all rows, else the first ``max_examples`` in TFDS order.
    file_order: rows in the file's record order instead of TFDS's (the order Hugging
      Face ``datasets`` and the official REDUCR code see; ``split_mode='official'``).

  Returns:
    ``(first, second, labels int32 [n], rows int64 [n], n)``: the sentence pairs (lists
    of str), labels, and each row's position in the TFDS split (``arange(n)``; with
    ``file_order``, its position among the file's well-formed rows).
  """
  _, files, (col_a, col_b), label_col, names = TASKS[task]
  path = os.path.join(directory, files[split])
  records, skipped, num_records = {}, [], 0
  with open(path, encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    for n, row in enumerate(reader):
      num_records = n + 1
      a, b, label = row.get(col_a), row.get(col_b), row.get(label_col)
      if names is not None:
        label = names.index(label) if label in names else None
      else:
        label = int(label) if label and label.strip().lstrip("-").isdigit() else None
        if label is not None and not 0 <= label < 2:
          label = None
      if a is None or b is None or label is None:
        skipped.append(n)
        continue
      records[n] = (a, b, label)
  if skipped:
    logging.warning("%s: skipped %d malformed row(s) of %s (record numbers %s%s)", task,
                    len(skipped), path, skipped[:5], " ..." if len(skipped) > 5 else "")
  order = (sorted(records) if file_order else
           [int(n) for n in tfds_order(split, num_records) if n in records])
  if max_examples >= 0:
    order = order[:max_examples]
  first = [records[n][0] for n in order]
  second = [records[n][1] for n in order]
  labels = np.asarray([records[n][2] for n in order], np.int32)
  return first, second, labels, np.arange(len(order), dtype=np.int64), len(order)
