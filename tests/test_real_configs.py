"""Every paper config runs end to end (2 train steps) on fake data the test writes.

The configs are loaded as users load them (``configs/<name>.py``) and only shrunk by
overrides (tiny models, batch sizes, step counts); data comes from ``tests/fakes.py``
(mocked TFDS catalog sets, fake CINIC-10 / Clothing1M / GLUE releases, a tiny vocabulary),
and the pretrained-weight paths point at tiny torch checkpoints / Hugging Face directories
written here; the models' sizes come from those checkpoints.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fakes
from reducr_jax import data
from reducr_jax.config import configuration
from reducr_jax.train import trainer as train

pytest.importorskip("tensorflow_datasets")

_SHRINK = {
    "num_steps": 2, "batch_size": 16, "selection.percent_selected": 0.5,
    "experts.num_steps": 2, "experts.batch_size": 8, "experts.eval_every": 2,
    "eval_every": 2, "eval_batch_size": 32, "log_every": 1, "checkpoint_every": 2,
}


def _config(name, tmp_path, **overrides):
  config = configuration.load_config(os.path.join("configs", f"{name}.py"))
  return configuration.with_overrides(config, {
      **_SHRINK, "dataset.data_dir": str(tmp_path / "tfds"), **overrides})


def _run(config, workdir, splits=None):
  results = train.train_and_evaluate(config, str(workdir), splits)
  assert results["num_steps"] == 2 and results["num_skipped"] == 0
  w = np.asarray(results["class_weights"])
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  for split in ("val", "test"):
    acc = np.asarray(results[split]["per_class_accuracy"], float)
    assert np.all((acc >= 0) & (acc <= 1) | np.isnan(acc))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["train/selected_loss"] for l in lines if "train/selected_loss" in l]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  return results


@pytest.mark.parametrize("name", ["cifar10", pytest.param("cifar100", marks=pytest.mark.slow)])
def test_cifar_configs_run(name, tmp_path):
  _, mock = fakes.mock_tfds(48)
  # The mocked catalog's `id`s are random strings, not `train_<original index>`: the
  # official even/odd split is covered by test_data_variants.py (a fake with real ids).
  overrides = {"model.width": 4, "model.stage_sizes": (1, 1), "dataset.download": True,
               "dataset.split_mode": "random"}
  if name == "cifar100":               # 100 classes: one multi-head expert model
    overrides["experts.losses"] = "multihead"
  config = _config(name, tmp_path, **overrides)
  # The data is read inside the TFDS mock, the run outside it: the mock patches the file
  # system process-wide while TFDS reads, which a checkpoint written in the background
  # (orbax's async save) must not see.
  with mock:
    splits = data.make_splits(config.dataset, config.seed)
  results = _run(config, tmp_path / "run", splits)
  assert len(results["class_names"]) == (10 if name == "cifar10" else 100)


@pytest.mark.slow
def test_cinic10_config_runs_in_bfloat16(tmp_path):
  manual, _ = fakes.write_cinic10(tmp_path)
  config = _config("cinic10", tmp_path, **{
      "model.width": 4, "model.stage_sizes": (1, 1), "model.dtype": "bfloat16", "dataset.manual_dir": str(manual),
      "selection.method": "rho_loss"})
  results = _run(config, tmp_path / "run")
  assert results["config"]["optimizer"]["weight_decay"] == 0.1


@pytest.mark.slow
def test_clothing1m_config_runs_from_a_torchvision_checkpoint(tmp_path):
  torch = pytest.importorskip("torch")
  source = fakes.torch_resnet(torch, stem="imagenet", width=4, num_classes=1000,
                              stage_sizes=(1, 1))
  ckpt = tmp_path / "resnet18-tiny.pth"
  torch.save(source.state_dict(), ckpt)
  # A truncated JPEG (as public mirrors have): a one-line error naming it, nothing prepared.
  manual, keys, *_ = fakes.write_clothing1m(tmp_path)
  bad = fakes.truncate_file(manual / keys["noisy_train"][3])
  # width and stage_sizes come from the checkpoint (config: None), not from overrides.
  config = _config("clothing1m", tmp_path, **{
      "model.pretrained": str(ckpt), "dataset.manual_dir": str(manual),
      "dataset.clothing1m_holdout_extra": 5})
  with pytest.raises(configuration.ConfigError, match="skip_bad_images") as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert bad in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "tfds" / "clothing1m" / "1.0.0")
  config.dataset.skip_bad_images = True           # leave it out and run
  results = _run(config, tmp_path / "run")
  assert results["class_names"][0] == "T-Shirt"
  with pytest.raises(configuration.ConfigError,
                     match=r"config.model.stage_sizes=\(2, 2\) contradicts \(1, 1\)"):
    train.train_and_evaluate(configuration.with_overrides(config, {"model.stage_sizes": (2, 2)}),
                             str(tmp_path / "run2"))


def _glue_rows(rng, n, num_classes):
  word = lambda: "".join(rng.choice(list("abcdefghij"), rng.integers(1, 4)))
  sentence = lambda: " ".join(word() for _ in range(rng.integers(2, 6)))
  return [(sentence(), sentence(), int(rng.integers(num_classes))) for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnli", "qqp"])
def test_text_configs_run_from_glue_tsv_and_a_bert_directory(name, tmp_path):
  """The GLUE release's TSV files and a tiny BERT given only as a Hugging Face directory
  (config.json + model.safetensors + vocab.txt): the model's sizes come from config.json."""
  pytest.importorskip("tokenizers")
  rng = np.random.default_rng(0)
  bert = fakes.write_hf_bert(tmp_path / "bert", vocab=fakes.write_vocab(tmp_path),
                             hidden=16, layers=1, heads=2, intermediate=32, max_position=32,
                             num_labels=3 if name == "mnli" else 2)
  k = 3 if name == "mnli" else 2
  splits = ({"train": _glue_rows(rng, 48, k), "validation_matched": _glue_rows(rng, 12, k),
             "validation_mismatched": _glue_rows(rng, 12, k)} if name == "mnli" else
            {"train": _glue_rows(rng, 80, k), "validation": _glue_rows(rng, 20, k)})
  fakes.write_glue(tmp_path / "glue_data", name, splits, malformed=1)
  overrides = {"dataset.tokenizer": str(bert), "dataset.max_length": 16,
               "dataset.manual_dir": str(tmp_path / "glue_data"),
               "model.pretrained": str(bert),
               # MNLI: 3 BERT experts evaluated every step; QQP: one multi-head model.
               "experts.losses": "online" if name == "mnli" else "multihead"}
  config = _config(name, tmp_path, **overrides)
  assert config.model.hidden_size is None           # no size override anywhere
  results = _run(config, tmp_path / "run")
  assert len(results["class_names"]) == k
  # An explicit size that contradicts config.json is a one-line error naming both.
  config = _config(name, tmp_path, **overrides, **{"model.num_layers": 12})
  with pytest.raises(configuration.ConfigError,
                     match=r"config.model.num_layers=12 contradicts 1 .*config.json") as e:
    train.train_and_evaluate(config, str(tmp_path / "run2"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "run2" / "checkpoints")


def test_missing_data_is_a_one_line_config_error(tmp_path):
  config = _config("cifar10", tmp_path)
  with pytest.raises(configuration.ConfigError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "download=True" in str(e.value) and "\n" not in str(e.value)


def test_missing_pretrained_file_is_a_one_line_config_error(tmp_path):
  config = _config("clothing1m", tmp_path, **{"model.pretrained": str(tmp_path / "nope.pth")})
  with pytest.raises(configuration.ConfigError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "config.model.pretrained" in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
