"""ConvNeXt (``model.name='convnext'``; official Clothing1M ConvNeXt runs)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import models
from reducr_jax.models import convnext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_convnext_tiny_has_28_6m_parameters_from_shapes():
  # By hand, per block of width d: dwconv 49d + d, LayerNorm 2d, Dense d→4d 4d² + 4d,
  # Dense 4d→d 4d² + d, layer scale d: 8d² + 58d. Stem 4·4·3·96 + 96 + 192 = 4,896;
  # blocks 3·79,296 + 3·306,048 + 9·1,201,920 + 3·4,763,136 = 26,262,720; downsampling
  # (LayerNorm 2·d_in + 2·2·d_in·d_out + d_out) 74,112 + 295,680 + 1,181,184; final
  # LayerNorm 1,536; head 768·1000 + 1000 = 769,000. Total 28,589,128 (paper: 28.6M).
  shapes = jax.eval_shape(convnext.ConvNeXt(num_outputs=1000).init, KEY,
                          jnp.zeros((1, 224, 224, 3), jnp.uint8))
  assert _count(shapes["params"]) == 28_589_128
  assert set(shapes) == {"params"}                          # no batch norm state
  p = shapes["params"]
  assert p["embeddings_patch"]["kernel"].shape == (4, 4, 3, 96)
  assert p["stage2_layer8"]["dwconv"]["kernel"].shape == (7, 7, 1, 384)
  assert p["stage3_downsample_conv"]["kernel"].shape == (2, 2, 384, 768)
  assert "stage2_layer9" not in p and "stage0_downsample_conv" not in p


@pytest.mark.slow
def test_tiny_convnext_forward_shapes_and_layer_scale():
  net = convnext.ConvNeXt(num_outputs=14, depths=(1, 2), dims=(8, 16))
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)), jnp.uint8)
  fns = models.model_fns(net, x[:1], init_impl="rbg")
  params, state = jax.jit(fns.init)(KEY)          # jitted: op-by-op is 10× slower on CPU
  assert state == {}
  logits = jax.jit(fns.apply)(models.variables(params, state), x)
  assert logits.shape == (2, 14) and logits.dtype == jnp.float32
  train_logits, _ = jax.jit(fns.apply_train)(params, state, x, KEY)
  np.testing.assert_allclose(train_logits, logits, rtol=1e-5, atol=1e-6)   # no dropout
  assert jax.eval_shape(net.clone(num_outputs=None).apply, {"params": params}, x).shape == (2, 16)
  np.testing.assert_allclose(params["stage1_layer1"]["layer_scale_parameter"],
                             np.full(16, 1e-6, np.float32))
  # A block with layer scale 0 is the identity (the residual alone).
  block = convnext.ConvNeXtBlock(8, layer_scale_init=0.0)
  h = jax.random.normal(KEY, (2, 4, 4, 8))
  np.testing.assert_array_equal(jax.jit(lambda v, h: block.apply(v, h))(block.init(KEY, h), h), h)


def test_clothing1m_convnext_config_builds_convnext_tiny():
  config = configuration.load_config(os.path.join(REPO, "configs/clothing1m_convnext.py"))
  configuration.validate_config(config, 1)
  assert (config.model.name, tuple(config.model.depths), tuple(config.model.dims)) == (
      "convnext", (3, 3, 9, 3), (96, 192, 384, 768))
  net = models.create_model(config.model, 14)
  assert isinstance(net, convnext.ConvNeXt) and net.num_outputs == 14
  assert models.init_rng_impl(config.model) == "rbg"
  # Everything but the model is configs/clothing1m.py.
  base = configuration.load_config(os.path.join(REPO, "configs/clothing1m.py"))
  del config["model"], base["model"]
  assert config.to_dict() == base.to_dict()


@pytest.mark.parametrize("overrides, message", [
    ({"model.dims": (96, 192)}, "config.model.depths and .dims must be equally long"),
    ({"model.depths": (3, 0, 9, 3)}, "config.model.depths and .dims must be equally long"),
    ({"model.pretrained": "/x/convnext.safetensors"},
     "config.model.pretrained must be '' for 'convnext' (no ImageNet weight importer yet)"),
])
def test_bad_convnext_fields_are_one_line(overrides, message):
  config = configuration.load_config(os.path.join(REPO, "configs/clothing1m_convnext.py"))
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(configuration.with_overrides(config, overrides), 1)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
