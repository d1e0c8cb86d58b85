"""models.create_model / model_fns / pretrained weights, and the host prefetcher."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

import fakes
from reducr_jax import models
from reducr_jax.core import stacked_experts
from reducr_jax.data import prefetch


def _resnet_config(**kw):
  return ml_collections.ConfigDict({**dict(
      name="resnet18", stem="imagenet", width=4, stage_sizes=(1, 1), mean=(), std=(),
      dtype="float32", pretrained="", pretrained_head=False), **kw})


def test_model_config_missing_a_field_is_one_line():
  cfg = _resnet_config()
  del cfg["stem"]
  with pytest.raises(ValueError) as e:
    models.validate_model_config(cfg)
  assert str(e.value).startswith("config.model lacks ['stem']: a 'resnet18' model config "
                                 "defines every field of") and "\n" not in str(e.value)


@pytest.mark.parametrize("field,value,needle", [
    ("name", "vit", "config.model.name must be one of"),
    ("stem", "deep", "config.model.stem must be one of"),
    ("dtype", "float16", "config.model.dtype must be one of"),
    ("width", 0, "config.model.width must be an int >= 1"),
    ("std", (0.1, 0.0, 0.2), "config.model.std must be"),
    ("stage_sizes", (), "config.model.stage_sizes must be"),
])
def test_bad_model_config_one_line(field, value, needle):
  cfg = _resnet_config()
  cfg[field] = value
  with pytest.raises(ValueError) as e:
    models.validate_model_config(cfg)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_model_fns_split_params_and_batch_stats():
  x0 = np.zeros((1, 16, 16, 3), np.uint8)
  fns = models.model_fns(models.create_model(_resnet_config(), 3), x0, init_impl="rbg")
  params, state = jax.jit(fns.init)(jax.random.PRNGKey(0))
  assert set(state) == {"batch_stats"} and "fc" in params
  x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  logits, new_state = fns.apply_train(params, state, x, jax.random.PRNGKey(1))
  assert logits.shape == (4, 3)
  assert not np.allclose(new_state["batch_stats"]["bn1"]["mean"],
                         state["batch_stats"]["bn1"]["mean"])
  np.testing.assert_allclose(fns.apply(models.variables(params, state), x)[:1],
                             fns.apply(models.variables(params, state), x[:1]), rtol=1e-5)
  mlp = models.model_fns(models.create_model(
      ml_collections.ConfigDict(
          {"name": "mlp", "hidden": (8,), "dtype": "float32", "pretrained": "",
           "pretrained_head": False}), 2), np.zeros((1, 5)))
  p, s = mlp.init(jax.random.PRNGKey(0))
  assert s == {} and mlp.apply_train(p, s, np.ones((3, 5)), jax.random.PRNGKey(0))[1] == {}


def test_pretrained_trunk_goes_into_every_expert_and_the_multihead_trunk(tmp_path):
  torch = pytest.importorskip("torch")
  source = fakes.torch_resnet(torch, stem="imagenet", width=4, num_classes=1000,
                              stage_sizes=(1, 1))
  path = tmp_path / "r.pth"
  torch.save(source.state_dict(), path)
  cfg = _resnet_config(pretrained=str(path))
  want = source.state_dict()["conv1.weight"].numpy().transpose(2, 3, 1, 0)
  want_var = source.state_dict()["bn1.running_var"].numpy()
  x0 = np.zeros((1, 16, 16, 3), np.uint8)
  fns = models.model_fns(models.create_model(cfg, 3), x0, init_impl="rbg")
  stacked_p, stacked_s = stacked_experts.init_stacked(fns.init, jax.random.PRNGKey(0), 3)
  p, s = models.load_pretrained_stacked(cfg, stacked_p, stacked_s)
  for c in range(3):
    np.testing.assert_array_equal(p["conv1"]["kernel"][c], want)
    np.testing.assert_array_equal(s["batch_stats"]["bn1"]["var"][c], want_var)
  heads = np.asarray(p["fc"]["kernel"])
  assert heads.shape[1:] == (8, 3) and not np.allclose(heads[0], heads[1])   # fresh, own
  np.testing.assert_array_equal(heads, stacked_p["fc"]["kernel"])
  trunk = stacked_experts.MultiHead(trunk=models.create_model(cfg, None), num_heads=3, num_classes=3)
  mh = models.model_fns(trunk, x0, init_impl="rbg")
  mp, ms = models.load_pretrained(cfg, *jax.jit(mh.init)(jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(mp["trunk"]["conv1"]["kernel"], want)
  np.testing.assert_array_equal(ms["batch_stats"]["trunk"]["bn1"]["var"], want_var)
  assert mp["heads"]["kernel"].shape == (8, 9)


def test_prefetch_yields_in_order_and_reraises():
  got = list(prefetch.prefetch(lambda t: t * t, 3, 9, size=2))
  assert got == [t * t for t in range(3, 9)]
  assert list(prefetch.prefetch(lambda t: t, 0, 3, size=0)) == [0, 1, 2]

  def bad(t):
    if t == 2:
      raise RuntimeError("boom at 2")
    return t
  it = prefetch.prefetch(bad, 0, 5)
  assert next(it) == 0 and next(it) == 1
  with pytest.raises(RuntimeError, match="boom at 2"):
    next(it)
