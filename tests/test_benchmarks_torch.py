"""benchmarks/torch_selection.py: the JAX and eager-torch REDUCR steps do the same work.

Tiny shapes; no timing is asserted. The equality checks of the benchmark itself are run
here: the same selected indices, the same α and class weights, and the same parameters
after AdamW steps, plus equal logits of the Flax models and their torch copies.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

# The benchmark scripts import ``harness`` as a top-level module (their folder is
# sys.path[0] when they run), so the folder goes on the path to import one here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import torch_selection  # noqa: E402  pylint: disable=wrong-import-position

from reducr_jax.config import configuration  # noqa: E402

C = 5


@pytest.fixture(scope="module")
def mlp_setup():
  spec = torch_selection.make_spec("mlp", C, batch_size=40, mlp_inputs=12, mlp_hidden=(16, 16))
  return torch_selection.build_setup(spec, eta=0.05, num_classes=C, extra_batches=1)


def _torch_logits(setup, model):
  data, _, _ = setup.torch_inputs()
  with torch.no_grad():
    return model.eval()(data).numpy()


def test_mlp_copy_gives_equal_logits(mlp_setup):
  flax_logits = np.asarray(mlp_setup.apply_fn(mlp_setup.variables["params"], mlp_setup.x))
  np.testing.assert_allclose(_torch_logits(mlp_setup, mlp_setup.torch_model()), flax_logits,
                             atol=1e-5)


def test_selection_same_indices_alpha_weights(mlp_setup):
  out = torch_selection.check_selection(mlp_setup)
  assert mlp_setup.k == 4
  assert out["max_alpha_diff"] < 1e-4 and out["max_weight_diff"] < 1e-6
  assert out["weight_spread"] > 1.5           # the weights mattered for the selection


def test_torch_official_selection_by_hand():
  """The torch re-implementation of the official step on a hand-computed example."""
  select = torch_selection.TorchReducrSelection(eta=1.0, losses=np.log([1.0, 3.0]))
  # weights softmax(−α) = [3/4, 1/4]; the "model" returns fixed logits with loss log 2.
  model = lambda x: torch.zeros((x.shape[0], 2))  # noqa: E731
  target = torch.tensor([0, 1, 0])
  table = torch.tensor([[0.0, 1.0, 2.0, 0.5],          # [C = 2, N = 4]
                        [0.5, 0.0, 0.1, 2.0]])
  index = torch.tensor([3, 0, 2])
  h = torch.tensor([0.1, 0.2])
  sel, w = select(2, torch.zeros((3, 1)), target, index, model, table, h)
  np.testing.assert_allclose(w.numpy(), [0.75, 0.25], atol=1e-6)
  ln2 = np.log(2.0)
  r = np.maximum(ln2 - np.array([[0.5, 2.0], [0.0, 0.5], [2.0, 0.1]]), 0)
  scores = r @ np.array([0.75, 0.25])
  np.testing.assert_array_equal(sel.numpy(), np.argsort(-scores)[:2])
  alpha = (r[np.argsort(-scores)[:2]] - [0.1, 0.2]).sum(0)
  np.testing.assert_allclose(select.losses.numpy(), np.log([1.0, 3.0]) + alpha, atol=1e-6)


def test_train_step_same_selection_and_parameters(mlp_setup):
  config = configuration.load_config(torch_selection.DEFAULT_CONFIG)
  out = torch_selection.check_train_step(mlp_setup, config, steps=2)
  assert out["param_fraction_within_atol"] == 1.0
  assert out["max_param_diff"] < 1e-6
  assert out["param_change_diff"] < 1e-4 and out["max_tensor_change_diff"] < 1e-3
  assert out["max_loss_diff"] < 1e-5
  assert out["max_param_change"] > 1e-3       # AdamW did move the parameters


def test_check_fails_on_different_weights(mlp_setup, monkeypatch):
  original = torch_selection.Setup.torch_model

  def perturbed(self):
    model = original(self)
    with torch.no_grad():
      model.Dense_2.bias += torch.arange(C, dtype=torch.float32)
    return model

  monkeypatch.setattr(torch_selection.Setup, "torch_model", perturbed)
  with pytest.raises(AssertionError):
    torch_selection.check_selection(mlp_setup)


def test_mismatched_architecture_is_a_value_error(mlp_setup):
  other = torch_selection.torch_mlp(torch, 12, (16, 16, 16), C)
  with pytest.raises(ValueError, match="Dense_3"):
    torch_selection.copy_to_torch(mlp_setup.variables, other)


@pytest.mark.skipif(not torch_selection.resnet_available(), reason="no reducr_jax ResNet18")
def test_resnet_copy_gives_equal_logits():
  # Two stages of one block: the stride-2 stage with its 1×1 downsample shortcut.
  spec = torch_selection.make_spec("resnet", C, batch_size=4, resnet_width=4, image_size=8,
                                   resnet_stage_sizes=(1, 1))
  setup = torch_selection.build_setup(spec, eta=0.05, num_classes=C, extra_batches=0,
                                      calibration_passes=3)
  stats = setup.variables["batch_stats"]
  assert not np.allclose(np.asarray(stats["bn1"]["mean"]), 0.0)   # calibrated, not fresh
  assert "downsample_0" in setup.variables["params"]["layer2_0"]
  flax_logits = np.asarray(jax.jit(setup.apply_fn)(setup.variables["params"], setup.x))
  np.testing.assert_allclose(_torch_logits(setup, setup.torch_model()), flax_logits,
                             atol=2e-4, rtol=1e-4)
