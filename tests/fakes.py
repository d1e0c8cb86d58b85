"""Fake datasets and source models the tests write themselves (nothing downloads).

* :func:`mock_tfds`: TFDS catalog datasets (CIFAR, GLUE) as random examples from the
  features (``tfds.testing.mock_data``);
* :func:`write_cinic10`, :func:`write_clothing1m`: tiny releases in the official layouts;
  :func:`truncate_file` damages one of their images;
* :func:`write_vocab`: a 25-token WordPiece vocabulary;
* :func:`write_glue`: MNLI / QQP as the GLUE release's TSV files;
* :func:`write_hf_bert`: a tiny Hugging Face BERT directory (config.json, safetensors,
  vocab.txt);
* :func:`torch_resnet`: torchvision's ResNet/BasicBlock with the same module names
  (torchvision itself is not installable next to torch 2.13.0+cpu).
"""

import os

import numpy as np
import pytest


def mock_tfds(num_examples):
  tfds = pytest.importorskip("tensorflow_datasets")
  return tfds, tfds.testing.mock_data(num_examples=num_examples,
                                      policy=tfds.testing.MockPolicy.USE_CODE)


def write_vocab(tmp_path):
  letters = list("abcdefghij")
  toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(toks) + "\n", encoding="utf-8")
  return str(path)


def smooth_image(rng, h, w):
  yy, xx = np.mgrid[0:h, 0:w]
  base = rng.uniform(40, 200, 3)
  slope = rng.uniform(-0.5, 0.5, (2, 3))
  img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
  return np.clip(img, 0, 255).astype(np.uint8)


def write_cinic10(tmp_path, per_class=3):
  """A fake CINIC-10 release under ``tmp_path/manual``: ``per_class`` (≥ 3) random 32×32
  PNGs per class and split (one grayscale) → ``(manual, pixels)``, ``pixels[split, class,
  j]`` the image."""
  from PIL import Image
  from reducr_jax.data import cinic10
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual"
  pixels = {}
  for split in cinic10.SPLITS:
    for c, cls in enumerate(cinic10.CLASS_NAMES):
      os.makedirs(manual / split / cls)
      for j in (2, 0, 1, *range(3, per_class)):             # written out of order
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        if (c, j) == (4, 1):                                # a grayscale file -> RGB
          img = np.repeat(img[..., :1], 3, axis=2)
          Image.fromarray(img[..., 0]).save(manual / split / cls / f"x{j}.png")
        else:
          Image.fromarray(img).save(manual / split / cls / f"x{j}.png")
        pixels[split, c, j] = img
  return manual, pixels


def write_clothing1m(tmp_path, sizes=None):
  """A fake Clothing1M release under ``tmp_path/manual`` (small smooth JPEGs, annotation
  files, key lists) → ``(manual, keys, clean_kv, noisy_kv, files)``."""
  from PIL import Image
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual"
  os.makedirs(manual / "annotations")
  sizes = sizes or {"clean_train": 8, "clean_val": 6, "clean_test": 6, "noisy_train": 20}
  keys, clean_kv, noisy_kv, files = {}, {}, {}, {}
  n = 0
  for split, count in sizes.items():
    keys[split] = []
    for _ in range(count):
      key = f"images/{n % 3}/{n % 5:02d}/{1000 + n}.jpg"
      os.makedirs(os.path.dirname(manual / key), exist_ok=True)
      img = smooth_image(rng, 40 + n % 7, 30 + n % 5)
      Image.fromarray(img).save(manual / key, quality=95)
      files[key] = img
      keys[split].append(key)
      label = int(rng.integers(0, 14))
      if split == "noisy_train":
        noisy_kv[key] = label
        if n % 2:
          clean_kv[key] = (label + 1) % 14                 # a clean label the pool ignores
      else:
        clean_kv[key] = label
        noisy_kv[key] = (label + 3) % 14                   # a noisy label the clean splits ignore
      n += 1
  ann = manual / "annotations"
  for f, kv in (("clean_label_kv.txt", clean_kv), ("noisy_label_kv.txt", noisy_kv)):
    (ann / f).write_text("".join(f"{k} {v}\n" for k, v in kv.items()))
  for split, ks in keys.items():
    (ann / f"{split}_key_list.txt").write_text("\n".join(ks) + "\n")

  return manual, keys, clean_kv, noisy_kv, files


def truncate_file(path, keep=0.8):
  """Cuts ``path`` to ``keep`` of its bytes, as an interrupted download leaves a JPEG."""
  data = open(path, "rb").read()
  open(path, "wb").write(data[:int(len(data) * keep)])
  return str(path)


def torch_resnet(torch, *, stem, width, num_classes, stage_sizes=(2, 2, 2, 2)):
  """torchvision's ResNet/BasicBlock, same module names (torchvision is not installable)."""
  tnn = torch.nn

  class BasicBlock(tnn.Module):

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.relu = tnn.ReLU(inplace=True)
      self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != planes:
        self.downsample = tnn.Sequential(
            tnn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), tnn.BatchNorm2d(planes))

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return self.relu(out + identity)

  class ResNet(tnn.Module):

    def __init__(self):
      super().__init__()
      if stem == "imagenet":
        self.conv1 = tnn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
      else:
        self.conv1 = tnn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.maxpool = tnn.Identity()
      self.bn1 = tnn.BatchNorm2d(width)
      self.relu = tnn.ReLU(inplace=True)
      inplanes = width
      for i, blocks in enumerate(stage_sizes):
        planes = width * 2**i
        layer = []
        for j in range(blocks):
          layer.append(BasicBlock(inplanes, planes, 2 if i > 0 and j == 0 else 1))
          inplanes = planes
        setattr(self, f"layer{i + 1}", tnn.Sequential(*layer))
      self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
      self.fc = tnn.Linear(inplanes, num_classes)

    def features(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for i in range(len(stage_sizes)):
        x = getattr(self, f"layer{i + 1}")(x)
      return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
      return self.fc(self.features(x))

  torch.manual_seed(0)
  model = ResNet()
  with torch.no_grad():   # non-trivial BN affine parameters and running statistics
    for module in model.modules():
      if isinstance(module, tnn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.3)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.fill_(7)
  return model.eval()


_MNLI_COLUMNS = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                 "sentence1_parse sentence2_parse sentence1 sentence2").split()
_MNLI_LABELS = ("entailment", "neutral", "contradiction")


def write_glue(root, task, splits, malformed=0):
  """The GLUE release's ``<root>/MNLI`` or ``<root>/QQP`` TSV files → the task folder.

  Args:
    splits: ``{TFDS split name: [(first, second, label int), ...]}`` in the order TFDS
      would hold them: records are placed so that reading in TFDS order (md5 of the split
      name + record number) gives exactly these rows.
    malformed: per file, this many extra records that lack columns (QQP) or have an
      empty gold label (MNLI); they must be skipped.
  """
  from reducr_jax.data import glue_tsv
  folder, files, *_ = glue_tsv.TASKS[task]
  out = root / folder
  os.makedirs(out, exist_ok=True)
  for split, rows in splits.items():
    n = len(rows) + malformed
    bad = set(range(1, 2 * malformed, 2)) if malformed else set()
    good = [int(r) for r in glue_tsv.tfds_order(split, n) if r not in bad]
    placed = dict(zip(good, rows))
    dev = split != "train"
    if task == "mnli":
      header = _MNLI_COLUMNS + ["label1"] + (["label2", "label3", "label4", "label5"]
                                             if dev else []) + ["gold_label"]
    else:
      header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    lines = ["\t".join(header)]
    for r in range(n):
      if task == "mnli":
        a, b, y = placed.get(r, ("a broken", "row", None))
        gold = _MNLI_LABELS[y] if y is not None else ""
        cells = [str(r), str(100 + r), f"{100 + r}e", "fiction", f"( {a} )", f"( {b} )",
                 f"(ROOT {a})", f"(ROOT {b})", a, b] + [gold or "neutral"] * (
                     5 if dev else 1) + [gold]
      elif r in placed:
        a, b, y = placed[r]
        cells = [str(r), str(2 * r), str(2 * r + 1), a, b, str(y)]
      else:                                # a question cut by a line break: 4 columns
        cells = [str(r), str(2 * r), str(2 * r + 1), "How do I"]
      lines.append("\t".join(cells))
    (out / files[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return out


def write_hf_bert(path, *, vocab, hidden=32, layers=2, heads=2, intermediate=64,
                  max_position=64, num_labels=3, seed=0):
  """A Hugging Face BERT directory as ``save_pretrained`` writes it (``config.json`` +
  ``model.safetensors``) plus ``vocab.txt`` → its path. Written by ``transformers``."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  words = [w for w in open(vocab, encoding="utf-8").read().split("\n") if w]
  torch.manual_seed(seed)
  model = transformers.BertForSequenceClassification(transformers.BertConfig(
      vocab_size=len(words), hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=intermediate,
      max_position_embeddings=max_position, num_labels=num_labels))
  model.save_pretrained(path, safe_serialization=True)
  (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
  return path


def flat_splits(n_train=11, n_val=7, classes=3):
  """Flat float features ``[m, 4]`` in all four splits (holdout 16, test 5 rows); train and
  val of different sizes so a per-split criterion can tell them apart."""
  from reducr_jax import data   # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def split(m):
    y = (np.arange(m) % classes).astype(np.int32)
    return data.Split(rng.normal(size=(m, 4)).astype(np.float32), y, y, np.arange(m))
  return data.Splits(split(n_train), split(16), split(n_val), split(5), classes,
                     [str(c) for c in range(classes)])
