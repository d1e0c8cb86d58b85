"""ResNet18 (both stems): shapes, BatchNorm modes, bfloat16, cross-device BN, torch import."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fakes
from reducr_jax.models import resnet
from reducr_jax.models import torch_import
from reducr_jax.models.resnet import ResNet18


def _images(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, variables, x, train=False):
  """Jitted ``model.apply``: ``(logits, new batch_stats)`` in train mode, logits otherwise."""
  if train:
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, x)


def _abstract(model, shape):
  """``model.init``'s variable shapes/dtypes for a uint8 ``shape`` input (traced, not run)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct(shape, jnp.uint8))


def _variables(model, shape, seed=0):
  """Concrete variables with ``model.init``'s tree, filled from NumPy.

  He-normal kernels, random BN affine parameters and running statistics. (Compiling
  ``model.init``'s random initialisers costs ~1 s of XLA CPU time per parameter, which the
  tests avoid; ``_abstract`` still traces the init code.)
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:   # bias, mean
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract(model, shape))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("stem,size,width", [("cifar", 32, 4), ("imagenet", 64, 8)])
def test_output_and_feature_shapes(stem, size, width):
  # Shapes only: eval_shape traces without computing.
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8)
  model = ResNet18(num_outputs=10, stem=stem, width=width)
  variables = _abstract(model, x.shape)
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  trunk = ResNet18(num_outputs=None, stem=stem, width=width)
  features = jax.eval_shape(trunk.apply, _abstract(trunk, x.shape), x)
  assert features.shape == (2, 8 * width) and features.dtype == jnp.float32
  params = variables["params"]
  first_kernel = (3, 3, 3, width) if stem == "cifar" else (7, 7, 3, width)
  assert params["conv1"]["kernel"].shape == first_kernel
  assert "downsample_0" not in params["layer1_0"]             # 64 → 64 channels, stride 1
  assert params["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, width, 2 * width)
  assert "downsample_0" not in params["layer2_1"]
  assert params["fc"]["kernel"].shape == (8 * width, 10)
  assert set(variables["batch_stats"]["layer4_1"]["bn2"]) == {"mean", "var"}


def test_full_width_parameter_count_equals_torchvision_resnet18():
  # torchvision.models.resnet18() has 11,689,512 parameters (1000 classes).
  shapes = _abstract(ResNet18(num_outputs=1000, stem="imagenet"), (1, 224, 224, 3))
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  assert count == 11_689_512


def test_normalisation_is_x_over_255_minus_mean_over_std():
  x = _images(1, (4, 16, 16, 3))
  model = ResNet18(width=4, stage_sizes=(1, 1, 1, 1))
  variables = _variables(model, x.shape)
  identity = ResNet18(width=4, stage_sizes=(1, 1, 1, 1), mean=(0.0, 0.0, 0.0),
                      std=(1.0, 1.0, 1.0))
  mean, std = np.array(resnet.CIFAR10_MEAN), np.array(resnet.CIFAR10_STD)
  pre_normalised = 255.0 * ((x / 255.0 - mean) / std)
  np.testing.assert_allclose(_apply(model, variables, x),
                             _apply(identity, variables, pre_normalised.astype(np.float32)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_apply(model, variables, x),
                             _apply(model, variables, x.astype(np.float32)), rtol=1e-6, atol=1e-6)


def test_bad_configuration_and_input_raise_one_line_errors():
  with pytest.raises(ValueError, match=r"ResNet18.stem must be one of \['cifar', 'imagenet'\]"):
    _abstract(ResNet18(stem="tiny"), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="ResNet18.stage_sizes"):
    _abstract(ResNet18(width=4, stage_sizes=(2, 0)), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="ResNet18.width must be a positive int"):
    _abstract(ResNet18(width=4.5), (1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"x must have shape \[B, H, W, 3\]"):
    _abstract(ResNet18(width=4), (1, 3, 32, 32))


# --------------------------------------------------------------------------- BatchNorm


def test_train_updates_batch_stats_and_eval_uses_running_stats():
  x = _images(2, (4, 16, 16, 3))
  model = ResNet18(width=4, stage_sizes=(1, 1, 1, 1))
  variables = _variables(model, x.shape)
  logits, batch_stats = _apply(model, variables, x, True)
  assert logits.shape == (4, 10)
  # Stem BN: running = 0.9 * running + 0.1 * batch statistic of conv1's output per channel
  # (biased variance, as Flax).
  xn = (x / 255.0 - np.array(resnet.CIFAR10_MEAN)) / np.array(resnet.CIFAR10_STD)
  y = jax.lax.conv_general_dilated(jnp.asarray(xn, jnp.float32),
                                   variables["params"]["conv1"]["kernel"], (1, 1),
                                   ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.asarray(y, np.float64)
  old, new = variables["batch_stats"]["bn1"], batch_stats["bn1"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * y.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * y.var((0, 1, 2)), rtol=1e-4)
  assert jax.tree.structure(batch_stats) == jax.tree.structure(
      variables["batch_stats"])
  # Eval mode: running statistics, so a row's logits do not depend on the rest of the batch;
  # in train mode they do.
  trained = {"params": variables["params"], "batch_stats": batch_stats}
  full = _apply(model, trained, x)
  np.testing.assert_allclose(_apply(model, trained, x[:1]), full[:1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(full, _apply(model, variables, x), atol=1e-3)
  train_one, _ = _apply(model, variables, x[:2], True)
  assert not np.allclose(train_one[:1], logits[:1], atol=1e-3)


def test_bfloat16_keeps_float32_params_and_outputs_close_to_float32():
  x = _images(3, (4, 16, 16, 3))
  f32 = ResNet18(width=4, stage_sizes=(1, 1, 1, 1))
  bf16 = ResNet18(width=4, stage_sizes=(1, 1, 1, 1), dtype="bfloat16")
  variables = _variables(f32, x.shape)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(_abstract(bf16, x.shape))):
    assert a.shape == b.shape and b.dtype == jnp.float32   # float32 params and BN stats
  for train in (False, True):
    ref = _apply(f32, variables, x, train)
    out = _apply(bf16, variables, x, train)
    if train:
      (ref, _), (out, new) = ref, out
      assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(new))
    assert out.dtype == jnp.float32
    scale = float(np.max(np.abs(ref)))
    np.testing.assert_allclose(out, ref, atol=0.05 * scale + 0.02)
    assert not np.array_equal(out, ref)          # it really ran in bfloat16


def test_pmap_cross_device_batch_norm_equals_single_device_on_whole_batch():
  n = jax.local_device_count()
  assert n == 8, "tests/conftest.py sets 8 fake CPU devices"
  x = _images(4, (2 * n, 16, 16, 3))
  single = ResNet18(width=4, stage_sizes=(1, 1, 1, 1))
  synced = ResNet18(width=4, stage_sizes=(1, 1, 1, 1), bn_axis_name="d")
  variables = _variables(single, x.shape)
  ref, ref_stats = _apply(single, variables, x, True)

  def step(model):
    return jax.pmap(lambda v, xb: model.apply(v, xb, train=True, mutable=["batch_stats"]),
                    axis_name="d", in_axes=(None, 0))

  out, updates = step(synced)(variables, x.reshape((n, 2) + x.shape[1:]))
  np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(ref_stats)
  for got, want in zip(jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(ref_stats)):
    for device in range(n):
      np.testing.assert_allclose(got[device], want, rtol=1e-4, atol=1e-5)
  # Without the axis name each device normalises its 2 rows alone: different numbers.
  local, _ = step(single)(variables, x.reshape((n, 2) + x.shape[1:]))
  assert not np.allclose(local.reshape(ref.shape), ref, atol=1e-3)


# --------------------------------------------------------------------------- torch import


def _torch_input(torch, x, mean, std):
  xn = (x.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
  return torch.from_numpy(np.ascontiguousarray(xn.transpose(0, 3, 1, 2)))


STEM_CASES = [("cifar", (2, 32, 32, 3), resnet.CIFAR10_MEAN, resnet.CIFAR10_STD),
              ("imagenet", (2, 64, 48, 3), resnet.IMAGENET_MEAN, resnet.IMAGENET_STD)]


@pytest.mark.parametrize("stem,shape,mean,std", STEM_CASES)
def test_imported_weights_give_torch_logits(tmp_path, stem, shape, mean, std):
  torch = pytest.importorskip("torch")
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  source = fakes.torch_resnet(torch, stem=stem, width=8, num_classes=10)
  state_dict = source.state_dict()
  assert "layer2.0.downsample.1.running_var" in state_dict
  torch.save(state_dict, tmp_path / "resnet.pth")
  torch.save({"model": state_dict, "epoch": 3}, tmp_path / "nested.pth")
  safetensors_numpy.save_file({k: v.numpy() for k, v in state_dict.items()},
                              str(tmp_path / "resnet.safetensors"))

  x = _images(5, shape)
  with torch.no_grad():
    want = source(_torch_input(torch, x, mean, std)).numpy()
  model = ResNet18(num_outputs=10, stem=stem, width=8, mean=mean, std=std)
  structure = jax.tree.structure(_abstract(model, x.shape))
  for name in ("resnet.pth", "nested.pth", "resnet.safetensors"):
    loaded = torch_import.load_torch_checkpoint(tmp_path / name)
    assert set(loaded) == set(state_dict)
    variables = torch_import.resnet_variables_from_torch(loaded)
    assert jax.tree.structure(variables) == structure
    got = _apply(model, variables, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Straight from model.state_dict() (torch tensors) too.
  variables = torch_import.resnet_variables_from_torch(state_dict)
  np.testing.assert_allclose(_apply(model, variables, x), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(variables["batch_stats"]["layer3_0"]["downsample_1"]["var"],
                                state_dict["layer3.0.downsample.1.running_var"].numpy())


def test_fresh_head_with_another_class_count_keeps_pretrained_trunk(tmp_path):
  torch = pytest.importorskip("torch")
  mean, std = resnet.IMAGENET_MEAN, resnet.IMAGENET_STD
  source = fakes.torch_resnet(torch, stem="imagenet", width=8, num_classes=10)
  torch.save(source.state_dict(), tmp_path / "resnet.pth")
  x = _images(6, (2, 64, 64, 3))
  with torch.no_grad():
    want_features = source.features(_torch_input(torch, x, mean, std)).numpy()

  loaded = torch_import.load_torch_checkpoint(tmp_path / "resnet.pth")
  trunk_weights = torch_import.resnet_variables_from_torch(loaded, include_head=False)
  assert "fc" not in trunk_weights["params"]
  model = ResNet18(num_outputs=14, stem="imagenet", width=8, mean=mean, std=std)
  fresh = _variables(model, x.shape, seed=1)
  merged = torch_import.merge_pretrained(fresh, trunk_weights, include_head=False)
  head = merged["params"]["fc"]
  np.testing.assert_array_equal(head["kernel"], fresh["params"]["fc"]["kernel"])
  assert head["kernel"].shape == (64, 14)
  np.testing.assert_array_equal(merged["params"]["layer1_0"]["conv1"]["kernel"],
                                loaded["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
  logits = _apply(model, merged, x)
  want = want_features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  # The trunk alone (num_outputs=None) takes the headless variables as they are.
  trunk = ResNet18(num_outputs=None, stem="imagenet", width=8, mean=mean, std=std)
  np.testing.assert_allclose(_apply(trunk, trunk_weights, x), want_features, rtol=1e-4, atol=1e-4)
  # A pretrained 10-way head does not fit a 14-way model.
  with_head = torch_import.resnet_variables_from_torch(loaded)
  with pytest.raises(ValueError, match=r"params/fc/kernel has shape \(64, 10\) but the "
                                       r"model's is \(64, 14\)"):
    torch_import.merge_pretrained(fresh, with_head, include_head=True)
  assert torch_import.merge_pretrained(fresh, with_head, include_head=False)["params"]["fc"][
      "kernel"].shape == (64, 14)


def test_import_errors_name_the_keys(tmp_path):
  torch = pytest.importorskip("torch")
  state_dict = {k: v.numpy() for k, v in
                fakes.torch_resnet(torch, stem="cifar", width=4, num_classes=3,
                              stage_sizes=(1, 1, 1, 1)).state_dict().items()}
  extra = dict(state_dict, **{"module.head.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"1 key\(s\) that are not .*: module.head.weight$"):
    torch_import.resnet_variables_from_torch(extra)
  partial = {k: v for k, v in state_dict.items()
             if k not in ("layer2.0.bn2.running_var", "layer3.0.downsample.0.weight")}
  with pytest.raises(ValueError, match=r"missing 2 key\(s\).*layer2.0.bn2.running_var, "
                                       r"layer3.0.downsample.0.weight"):
    torch_import.resnet_variables_from_torch(partial)
  no_head = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
  with pytest.raises(ValueError, match=r"missing 2 key\(s\).*fc.bias, fc.weight"):
    torch_import.resnet_variables_from_torch(no_head)
  assert "fc" not in torch_import.resnet_variables_from_torch(
      no_head, include_head=False)["params"]
  # A pretrained trunk with fewer blocks than the model: the model's extra ones are missing.
  shallow = torch_import.resnet_variables_from_torch(state_dict, include_head=False)
  model = ResNet18(num_outputs=3, width=4)
  fresh = _abstract(model, (1, 16, 16, 3))
  with pytest.raises(ValueError, match=r"pretrained lacks \d+ variable\(s\) of the model: "
                                       r"batch_stats/layer1_1/bn1/mean"):
    torch_import.merge_pretrained(fresh, shallow, include_head=False)
  with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
    torch_import.load_torch_checkpoint(tmp_path / "missing.pth")
