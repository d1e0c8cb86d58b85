"""Every paper config runs end to end (2 train steps) on fake data the test writes.

The configs are loaded as users load them (``configs/<name>.py``) and only shrunk by
overrides (tiny models, batch sizes, step counts); data comes from ``tests/fakes.py``
(mocked TFDS catalog sets, fake CINIC-10 / Clothing1M releases, a tiny vocabulary), and
the pretrained-weight paths point at tiny torch / safetensors checkpoints written here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fakes
from reducr_jax import configuration
from reducr_jax import train

pytest.importorskip("tensorflow_datasets")

_SHRINK = {
    "num_steps": 2, "batch_size": 16, "selection.percent_selected": 0.5,
    "experts.num_steps": 2, "experts.batch_size": 8, "experts.eval_every": 2,
    "eval_every": 2, "eval_batch_size": 32, "log_every": 1, "checkpoint_every": 2,
}
_TINY_BERT = {"model.vocab_size": 25, "model.hidden_size": 16, "model.num_layers": 1,
              "model.num_heads": 2, "model.intermediate_size": 32, "model.max_position": 32}


def _config(name, tmp_path, **overrides):
  config = configuration.load_config(os.path.join("configs", f"{name}.py"))
  return configuration.with_overrides(config, {
      **_SHRINK, "dataset.data_dir": str(tmp_path / "tfds"), **overrides})


def _run(config, workdir):
  results = train.train_and_evaluate(config, str(workdir))
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


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_configs_run(name, tmp_path):
  _, mock = fakes.mock_tfds(48)
  overrides = {"model.width": 4, "model.stage_sizes": (1, 1), "dataset.download": True}
  if name == "cifar100":               # 100 classes: one multi-head expert model
    overrides["experts.losses"] = "multihead"
  with mock:
    results = _run(_config(name, tmp_path, **overrides), tmp_path / "run")
  assert len(results["class_names"]) == (10 if name == "cifar10" else 100)


def test_cinic10_config_runs_in_bfloat16(tmp_path):
  manual, _ = fakes.write_cinic10(tmp_path)
  config = _config("cinic10", tmp_path, **{
      "model.width": 4, "model.stage_sizes": (1, 1), "model.dtype": "bfloat16", "dataset.manual_dir": str(manual),
      "selection.method": "rho_loss"})
  results = _run(config, tmp_path / "run")
  assert results["config"]["optimizer"]["weight_decay"] == 0.1


def test_clothing1m_config_runs_from_a_torchvision_checkpoint(tmp_path):
  torch = pytest.importorskip("torch")
  manual, *_ = fakes.write_clothing1m(tmp_path)
  source = fakes.torch_resnet(torch, stem="imagenet", width=4, num_classes=1000,
                              stage_sizes=(1, 1))
  ckpt = tmp_path / "resnet18-tiny.pth"
  torch.save(source.state_dict(), ckpt)
  config = _config("clothing1m", tmp_path, **{
      "model.width": 4, "model.stage_sizes": (1, 1), "model.pretrained": str(ckpt), "dataset.manual_dir": str(manual),
      "dataset.clothing1m_holdout_extra": 5})
  results = _run(config, tmp_path / "run")
  assert results["class_names"][0] == "T-Shirt"


@pytest.mark.parametrize("name", ["mnli", "qqp"])
def test_text_configs_run(name, tmp_path):
  pytest.importorskip("tokenizers")
  vocab = fakes.write_vocab(tmp_path)
  overrides = {**_TINY_BERT, "dataset.tokenizer": vocab, "dataset.max_length": 16,
               "dataset.download": True, "model.pretrained": ""}
  if name == "mnli":                   # import a tiny Hugging Face checkpoint
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=25, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3))
    hf.save_pretrained(tmp_path / "bert", safe_serialization=True)
    overrides["model.pretrained"] = str(tmp_path / "bert")
    overrides["experts.losses"] = "online"           # 3 BERT experts evaluated every step
  else:
    overrides["experts.losses"] = "multihead"
  _, mock = fakes.mock_tfds(40)
  with mock:
    results = _run(_config(name, tmp_path, **overrides), tmp_path / "run")
  assert len(results["class_names"]) == (3 if name == "mnli" else 2)


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
