"""REDUCR selection step and train step: reducr_jax (jit / pmap) vs eager PyTorch, side by side.

The PyTorch side re-implements, in eager mode, what the official REDUCR code (Bankes et al.,
PyTorch Lightning + Hydra; ``robust_reducible_loss_selection.__call__`` and
``MultiModels.training_step``) does per step:

  * under ``torch.no_grad()``: the target model's per-example cross-entropy on the large batch
    (``F.cross_entropy(..., reduction="none")``); the ``[C, B]`` irreducible losses gathered
    from the precomputed ``[C, N]`` table one class at a time and stacked (as its
    ``PrecomputedMultiIrreducibleLossGenerator``); ``R = (model_loss − irreducible).T``
    clipped by a boolean-mask assignment; weights ``exp(−η α − logsumexp(−η α))`` from the
    cumulative ``α``; scores ``(weights * R).sum(-1)``; the top k by
    ``torch.argsort(descending=True)[:k]`` (the official ``top_x_indices``; a
    ``torch.topk`` variant is timed too); ``α += (R[selected] − h).sum(0)``; the NaN assert;
  * the train step adds ``zero_grad``, forward on the k selected points,
    ``cross_entropy(...).mean().backward()`` and ``torch.optim.AdamW.step()``.
  Left out on both sides: logging (the official code copies several arrays to NumPy every
  step), the data loader, the LR scheduler. The model selects in eval mode (the official
  default, ``selection_train_mode=True``, selects in train mode; that only matters for
  BatchNorm, see below).

The JAX side: the selection step is one ``jax.jit`` of
``reducr_jax.core.class_weighted_losses.cross_entropy``, a gather of the table's ``[B, C]`` rows, ``selection_scores.excess_losses``,
``selection_scores.weighted_scores`` with ``mwu.weights``, ``selection.top_k``,
``mwu.class_objective`` and ``mwu.update``; the train step is
``reducr_jax.train.selection_step.make_train_step`` itself (``pmap`` over one device), fed as the trainer
feeds it (NumPy batch with the table rows gathered on the host) and, as a second row, with
the batch already on the device. It does a little more than the torch step: the finiteness
guard on loss, gradients and weights, the per-class selection counts and its metrics.

Models (same architecture and the same initial weights: Flax variables drawn by
:func:`random_variables` are copied into torch): ``mlp`` =
``reducr_jax.models.mlp.MLP((256, 256), 10)`` on 64 inputs, B = 320;
``resnet`` = ``reducr_jax.models.resnet.ResNet18(10, stem="cifar", width=16)`` on 32×32×3,
B = 128 (BatchNorm in eval mode in both frameworks, also in the train step: the library's
``train_step`` takes ``apply_fn(params, x)`` without ``batch_stats``); ``cnn`` =
``harness.SmallCNN`` on 32×32×3, B = 320. k = B // 10 in both. Before timing, both
implementations are run on the same inputs and must select the same indices and give the
same α and class weights (and, after ``--check_steps`` train steps, the same parameters).

  python benchmarks/torch_selection.py [--quick] [--models mlp,resnet,cnn]

Writes ``benchmarks/results/torch_selection.{json,md}`` (see ``--out``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import flax.jax_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import harness  # this folder is sys.path[0] when run as ``python benchmarks/torch_selection.py``
from reducr_jax.core import class_weighted_losses
from reducr_jax.config import configuration
from reducr_jax.core import mwu
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax import selectors
from reducr_jax.train import optimizers
from reducr_jax.train import selection_step
from reducr_jax.train import train_state
from reducr_jax.models.mlp import MLP

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "..", "configs", "default.py")
MODEL_NAMES = ("mlp", "resnet", "cnn")


def import_torch():
  """``torch``, or a one-line ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError('this benchmark needs PyTorch: pip install "reducr_jax[torch]"') from None
  return torch


def resnet_available() -> bool:
  """Whether ``reducr_jax.models.resnet.ResNet18`` can be imported."""
  try:
    from reducr_jax.models import resnet  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return hasattr(resnet, "ResNet18")


# ---------------------------------------------------------------------------------------
# The models, in Flax and in torch.


@dataclasses.dataclass
class ModelSpec:
  """One benchmark model.

  Attributes:
    name: ``"mlp"``, ``"cnn"`` or ``"resnet"``.
    module: the Flax module.
    input_shape: one example's shape in JAX layout (``[F]`` or ``[H, W, 3]``).
    batch_size: B; k = B // 10 unless given.
    torch_builder: ``torch -> torch.nn.Module`` of the same architecture.
    has_batch_norm: BatchNorm layers (eval mode in both frameworks).
    image_scale: inputs are uniform in ``[0, image_scale]`` (raw pixels) if > 0, else
      standard normal.
  """
  name: str
  module: nn.Module
  input_shape: tuple[int, ...]
  batch_size: int
  torch_builder: Callable[[Any], Any]
  has_batch_norm: bool = False
  image_scale: float = 0.0

  @property
  def nchw(self) -> bool:
    """Whether torch takes the input as ``[B, C, H, W]`` (images)."""
    return len(self.input_shape) == 3


def torch_mlp(torch, in_features: int, hidden: Sequence[int], num_outputs: int):
  """``nn.Sequential`` of Linear+ReLU named ``Dense_i`` like the Flax MLP's layers."""
  layers = collections.OrderedDict()
  width = in_features
  for i, h in enumerate(hidden):
    layers[f"Dense_{i}"] = torch.nn.Linear(width, h)
    layers[f"relu_{i}"] = torch.nn.ReLU()
    width = h
  layers[f"Dense_{len(hidden)}"] = torch.nn.Linear(width, num_outputs)
  return torch.nn.Sequential(layers)


def torch_small_cnn(torch, features: Sequence[int], num_outputs: int):
  """``harness.SmallCNN`` in torch: 3×3 convs (pad 1) + ReLU, 2×2 avg pools, mean, Linear."""
  layers = collections.OrderedDict()
  width = 3
  for i, f in enumerate(features):
    layers[f"Conv_{i}"] = torch.nn.Conv2d(width, f, 3, padding=1)
    layers[f"relu_{i}"] = torch.nn.ReLU()
    if i < len(features) - 1:
      layers[f"pool_{i}"] = torch.nn.AvgPool2d(2)
    width = f
  layers["mean"] = torch.nn.AdaptiveAvgPool2d(1)
  layers["flatten"] = torch.nn.Flatten()
  layers["Dense_0"] = torch.nn.Linear(width, num_outputs)
  return torch.nn.Sequential(layers)


@functools.lru_cache(maxsize=None)
def _torch_resnet_classes():
  """The torch ResNet-18 classes (defined on first use: torch is imported lazily)."""
  torch = import_torch()
  tnn = torch.nn

  class BasicBlock(tnn.Module):
    """torchvision-layout BasicBlock: 3×3 conv-BN-ReLU, 3×3 conv-BN, identity/1×1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cout)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                         tnn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet18(tnn.Module):
    """CIFAR-stem ResNet-18 on raw ``[B, 3, H, W]`` pixels in ``[0, 255]``, normalised inside."""

    def __init__(self, num_outputs: int, width: int, stage_sizes: Sequence[int],
                 mean: Sequence[float], std: Sequence[float]):
      super().__init__()
      self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
      self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
      self.conv1 = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      cin, self.stages = width, []
      for i, n in enumerate(stage_sizes):
        blocks = []
        for j in range(n):
          cout = width * 2**i
          blocks.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
          cin = cout
        self.add_module(f"layer{i + 1}", tnn.Sequential(*blocks))
        self.stages.append(f"layer{i + 1}")
      self.fc = tnn.Linear(cin, num_outputs)

    def forward(self, x):
      x = (x / 255.0 - self.mean) / self.std
      x = torch.relu(self.bn1(self.conv1(x)))
      for name in self.stages:
        x = getattr(self, name)(x)
      return self.fc(x.mean(dim=(2, 3)))

  return ResNet18


def make_spec(name: str, num_classes: int = 10, *, batch_size: Optional[int] = None,
              cnn_features: Sequence[int] = (8, 16, 32), resnet_width: int = 16,
              mlp_inputs: int = 64, mlp_hidden: Sequence[int] = (256, 256),
              image_size: int = 32,
              resnet_stage_sizes: Sequence[int] = (2, 2, 2, 2)) -> ModelSpec:
  """The :class:`ModelSpec` of ``name`` (``mlp``, ``cnn`` or ``resnet``).

  Defaults are the benchmark's; the tests pass tiny sizes.
  """
  if name == "mlp":
    hidden = tuple(mlp_hidden)
    return ModelSpec("mlp", MLP(hidden, num_classes), (mlp_inputs,), batch_size or 320,
                     lambda torch: torch_mlp(torch, mlp_inputs, hidden, num_classes))
  if name == "cnn":
    feats = tuple(cnn_features)
    return ModelSpec("cnn", harness.SmallCNN(feats, num_classes),
                     (image_size, image_size, 3),
                     batch_size or 320,
                     lambda torch: torch_small_cnn(torch, feats, num_classes))
  if name == "resnet":
    if not resnet_available():
      raise ValueError("model 'resnet' needs reducr_jax/models/resnet.py (ResNet18); "
                       "use --models mlp,cnn")
    from reducr_jax.models import resnet  # pylint: disable=import-outside-toplevel
    module = resnet.ResNet18(num_classes, stem="cifar", width=resnet_width,
                             stage_sizes=tuple(resnet_stage_sizes))
    builder = lambda torch: _torch_resnet_classes()(  # noqa: E731
        num_classes, resnet_width, tuple(module.stage_sizes), module.mean, module.std)
    return ModelSpec("resnet", module, (image_size, image_size, 3), batch_size or 128, builder,
                     has_batch_norm=True, image_scale=255.0)
  raise ValueError(f"--models entries must be among {list(MODEL_NAMES)}, got {name!r}")


# ---------------------------------------------------------------------------------------
# Flax variables → torch state.


def _torch_module_path(name: str) -> tuple[str, ...]:
  """torch module name → Flax path: ``layer2.0.downsample.0`` → ``layer2_0/downsample_0``."""
  parts: list[str] = []
  for part in name.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return tuple(parts)


def _lookup(tree: Any, path: tuple[str, ...], what: str) -> Any:
  for key in path:
    if key not in tree:
      raise ValueError(f"no Flax {what} {'/'.join(path)} for the torch module of that name")
    tree = tree[key]
  return tree


def flax_as_torch_state(variables: dict, torch_model) -> dict[str, np.ndarray]:
  """The Flax ``variables`` as float32 NumPy arrays under ``torch_model``'s state-dict keys.

  Dense ``kernel [in, out]`` → Linear ``weight [out, in]``; Conv ``kernel [kh, kw, in, out]``
  → Conv2d ``weight [out, in, kh, kw]``; BatchNorm ``scale``/``bias`` and ``batch_stats``
  ``mean``/``var`` → ``weight``/``bias``/``running_mean``/``running_var``. Module names map
  as in :func:`_torch_module_path`.

  Raises:
    ValueError: a torch layer without a Flax counterpart, or Flax parameters left over.
  """
  torch = import_torch()
  params, stats = variables["params"], variables.get("batch_stats", {})
  out, used = {}, 0
  for name, mod in torch_model.named_modules():
    path = _torch_module_path(name)
    if isinstance(mod, torch.nn.Linear):
      p = _lookup(params, path, "Dense")
      out[f"{name}.weight"] = np.asarray(p["kernel"]).T
    elif isinstance(mod, torch.nn.Conv2d):
      p = _lookup(params, path, "Conv")
      out[f"{name}.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
    elif isinstance(mod, torch.nn.BatchNorm2d):
      p, s = _lookup(params, path, "BatchNorm"), _lookup(stats, path, "batch_stats")
      out[f"{name}.weight"] = np.asarray(p["scale"])
      out[f"{name}.running_mean"] = np.asarray(s["mean"])
      out[f"{name}.running_var"] = np.asarray(s["var"])
    else:
      continue
    if "bias" in p:
      out[f"{name}.bias"] = np.asarray(p["bias"])
    used += len(p)
  total = len(jax.tree.leaves(params))
  if used != total:
    raise ValueError(f"torch model uses {used} of the {total} Flax parameter arrays")
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def copy_to_torch(variables: dict, torch_model) -> None:
  """Loads the Flax ``variables`` into ``torch_model`` (see :func:`flax_as_torch_state`)."""
  torch = import_torch()
  state = torch_model.state_dict()
  for key, value in flax_as_torch_state(variables, torch_model).items():
    if tuple(state[key].shape) != value.shape:
      raise ValueError(f"{key}: torch shape {tuple(state[key].shape)}, Flax {value.shape}")
    state[key] = torch.from_numpy(value.copy())
  torch_model.load_state_dict(state)


# ---------------------------------------------------------------------------------------
# The two implementations.


class TorchReducrSelection:
  """REDUCR selection as the official code's ``robust_reducible_loss_selection`` runs it.

  Eager torch under ``torch.no_grad()``; keeps the cumulative objective ``losses`` (α,
  ``float32[C]``) and draws the weights ``softmax(−η α)`` from it each call.

  Args:
    eta: η.
    losses: initial cumulative α ``[C]``.
    use_topk: ``torch.topk`` instead of the official ``argsort(descending=True)[:k]``.
  """

  def __init__(self, eta: float, losses: np.ndarray, use_topk: bool = False):
    self.torch = import_torch()
    self.eta = self.torch.tensor(eta)
    self.losses = self.torch.tensor(np.asarray(losses, np.float32))
    self.use_topk = use_topk

  def __call__(self, k: int, data, target, global_index, large_model, irreducible_table,
               robust_holdout_loss):
    """One selection: returns ``(selected int64[k], weights used [C])``; updates α.

    Args:
      data: ``[B, ...]`` inputs; target: ``int64[B]``; global_index: ``int64[B]`` rows of
      the table; irreducible_table: ``[C, N]``; robust_holdout_loss: ``h [C]``.
    """
    torch = self.torch
    with torch.no_grad():
      model_loss = torch.nn.functional.cross_entropy(large_model(data), target,
                                                     reduction="none")
      irreducible_losses = torch.stack([row[global_index] for row in irreducible_table])
      reducible_losses = (model_loss - irreducible_losses).T          # [B, C]
      reducible_losses[reducible_losses < 0] = 0
      log_weights = -self.eta * self.losses
      weights = (log_weights - log_weights.logsumexp(dim=0)).exp()
      weighted_reducible_loss = (weights * reducible_losses).sum(axis=-1)
      if self.use_topk:
        selected = torch.topk(weighted_reducible_loss, k).indices
      else:
        selected = torch.argsort(weighted_reducible_loss, descending=True)[:k]
      self.losses += (reducible_losses[selected, :] - robust_holdout_loss).sum(axis=0)
      assert not self.losses.isnan().any(), "losses should have no nan elements"
    return selected, weights

  def weights(self):
    """Current class weights ``softmax(−η α)`` as NumPy ``[C]``."""
    return self.torch.softmax(-self.eta * self.losses, 0).numpy()


def torch_train_step(select: TorchReducrSelection, model, optimizer, k: int, data, target,
                     global_index, irreducible_table, holdout_loss, batch_norm: bool):
  """One official-style train step: selection, then AdamW on the k selected points.

  The model selects in eval mode and trains in train mode (``batch_norm=True`` keeps eval
  mode for training too, matching the JAX side's frozen BatchNorm).

  Returns:
    ``(selected int64[k], mean loss on them before the update)`` (a 0-d tensor).
  """
  torch = select.torch
  model.eval()
  selected, _ = select(k, data, target, global_index, model, irreducible_table, holdout_loss)
  model.train(not batch_norm)
  optimizer.zero_grad()
  logits = model(data[selected])
  loss = torch.nn.functional.cross_entropy(logits, target[selected], reduction="none")
  mean = loss.mean()
  mean.backward()
  optimizer.step()
  return selected, mean


def make_jax_selection(apply_fn: Callable, k: int, eta: float) -> Callable:
  """The jitted REDUCR selection step built from reducr_jax's pure functions.

  Returns:
    ``select(params, log_w [C], x [B, ...], y int[B], global_index int[B], table [N, C],
    holdout_loss [C]) -> (selected int32[k], new log_w [C], alpha [C])``.
  """

  @jax.jit
  def select(params, log_w, x, y, global_index, table, holdout_loss):
    model_loss = class_weighted_losses.cross_entropy(apply_fn(params, x), y)
    excess = selection_scores.excess_losses(model_loss, table[global_index])
    scores = selection_scores.weighted_scores(excess, mwu.weights(log_w))
    sel = selection.top_k(scores, k)
    alpha = mwu.class_objective(excess[sel], holdout_loss)
    return sel, mwu.update(log_w, alpha, eta), alpha

  return select


# ---------------------------------------------------------------------------------------
# One model's inputs, state and both implementations.


@dataclasses.dataclass
class Setup:
  """Everything one model's comparison uses (NumPy arrays in JAX layout unless noted).

  ``x [B, ...]``, ``y int32[B]``, ``index int32[B]`` rows of ``table [N, C]``,
  ``holdout_loss [C]``, ``alpha0 [C]`` the starting cumulative α (JAX:
  ``log_w0 = log_softmax(−η α0)``), ``batches``: further ``(x, y, index)`` for the
  multi-step check.
  """
  spec: ModelSpec
  variables: dict
  apply_fn: Callable
  k: int
  eta: float
  x: np.ndarray
  y: np.ndarray
  index: np.ndarray
  table: np.ndarray
  holdout_loss: np.ndarray
  alpha0: np.ndarray
  batches: list

  @property
  def log_w0(self) -> jax.Array:
    """The JAX side's starting MWU log-weights ``[C]``."""
    return jax.nn.log_softmax(-self.eta * jnp.asarray(self.alpha0))

  def torch_inputs(self, x=None, y=None, index=None):
    """``(data, target int64, global_index int64)`` as torch tensors (NCHW for images)."""
    torch = import_torch()
    x = self.x if x is None else x
    if self.spec.nchw:
      x = x.transpose(0, 3, 1, 2)
    # Copies: torch.from_numpy shares memory and warns about read-only arrays.
    return (torch.from_numpy(np.array(x, np.float32, order="C")),
            torch.from_numpy(np.array(self.y if y is None else y, np.int64)),
            torch.from_numpy(np.array(self.index if index is None else index, np.int64)))

  def torch_table(self):
    """The ``[C, N]`` table and ``h [C]`` as torch tensors (the official layout)."""
    torch = import_torch()
    return (torch.from_numpy(np.ascontiguousarray(self.table.T)),
            torch.from_numpy(self.holdout_loss.copy()))

  def torch_model(self):
    """A fresh torch model holding this setup's Flax variables."""
    torch = import_torch()
    model = self.spec.torch_builder(torch)
    copy_to_torch(self.variables, model)
    return model


def random_variables(module: nn.Module, x: np.ndarray, seed: int) -> dict:
  """Flax variables of ``module`` for input ``x``, drawn with NumPy (no XLA compile).

  Kernels ``N(0, 2 / fan_in)`` (He et al. 2015), biases ``N(0, 0.1²)``, BatchNorm scales
  ``1 + N(0, 0.1²)``, running statistics mean 0 / var 1. Non-zero biases make the
  equality checks cover them too (Flax initialises them to 0); the shapes come from
  ``jax.eval_shape(module.init)``, which costs a trace, whereas compiling a ResNet's
  ``init`` (one random kernel per layer) took ~10 s of XLA:CPU time.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(x[:1]))

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    elif name == "scale":
      value = 1.0 + rng.normal(0.0, 0.1, shape)
    elif name == "var":
      value = np.ones(shape)
    elif name == "mean":
      value = np.zeros(shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    return jnp.asarray(value, leaf.dtype)

  return {key: jax.tree_util.tree_map_with_path(draw, shapes[key]) for key in shapes}


def _calibrate_batch_stats(module: nn.Module, variables: dict, x: np.ndarray,
                           passes: int = 30) -> dict:
  """Running BatchNorm statistics moved towards ``x``'s by train-mode passes.

  Fresh statistics (mean 0, var 1) would make eval-mode BatchNorm an identity and let the
  activations of a deep net blow up; after n passes they hold (1 − 0.9ⁿ) of the batch's.
  """
  @jax.jit
  def one(v):
    _, upd = module.apply(v, x, train=True, mutable=["batch_stats"])
    return {"params": v["params"], "batch_stats": upd["batch_stats"]}
  for _ in range(passes):
    variables = one(variables)
  return variables


def build_setup(spec: ModelSpec, *, eta: float, k: Optional[int] = None,
                num_classes: int = 10, table_rows: Optional[int] = None, seed: int = 0,
                extra_batches: int = 2, calibration_passes: int = 30) -> Setup:
  """Random inputs, a random ``[N, C]`` table, Flax variables (:func:`random_variables`,
  BatchNorm statistics calibrated on the batch).

  Expert losses are uniform in ``[0, 3]`` and h in ``[1.5, 2.5]``, so the clipped excess
  loss is positive for some classes and zero for others; ``α0`` is large enough that the
  class weights ``softmax(−η α0)`` are far from uniform and change the selection.
  """
  rng = np.random.default_rng(seed)
  b = spec.batch_size
  k = k if k is not None else b // 10
  n = table_rows or 10 * b

  def inputs():
    shape = (b,) + spec.input_shape
    if spec.image_scale > 0:
      x = rng.uniform(0, spec.image_scale, shape)
    else:
      x = rng.normal(size=shape)
    return (x.astype(np.float32), rng.integers(0, num_classes, b).astype(np.int32),
            rng.choice(n, b, replace=False).astype(np.int32))

  x, y, index = inputs()
  variables = random_variables(spec.module, x, seed)
  if spec.has_batch_norm:
    variables = _calibrate_batch_stats(spec.module, variables, x, calibration_passes)
    stats = variables["batch_stats"]
    apply_fn = lambda p, xx: spec.module.apply(  # noqa: E731
        {"params": p, "batch_stats": stats}, xx, train=False)
  else:
    apply_fn = lambda p, xx: spec.module.apply({"params": p}, xx)  # noqa: E731
  table = rng.uniform(0.0, 3.0, (n, num_classes)).astype(np.float32)
  holdout_loss = rng.uniform(1.5, 2.5, num_classes).astype(np.float32)
  alpha0 = (rng.normal(size=num_classes) * 1.0 / eta).astype(np.float32)
  return Setup(spec, variables, apply_fn, k, eta, x, y, index, table, holdout_loss, alpha0,
               [inputs() for _ in range(extra_batches)])


def jax_step_parts(setup: Setup, config) -> tuple[Callable, Callable, Any]:
  """``(pmapped train step, fresh replicated state (), StepConfig)`` from reducr_jax.train.trainer.

  The config's optimizer (AdamW) and selection settings, with this setup's η and k, the
  precomputed-table reference, one device.
  """
  c = setup.table.shape[1]
  devices = jax.local_devices()[:1]
  sel = config.selection
  if sel.method != "reducr" or sel.holdout_loss != "epoch" or sel.soft_temperature != 0:
    raise ValueError("the config must select with method='reducr', holdout_loss='epoch', "
                     "soft_temperature=0")
  cfg = dataclasses.replace(train_state.StepConfig.from_config(config, c, 1, "table"), k=setup.k,
                            selector=selectors.reducr.reducr(eta=setup.eta, clip=sel.clip))
  tx = optimizers.make_optimizer(config.optimizer)
  step = selection_step.make_train_step(setup.apply_fn, None, tx, cfg, devices)
  params = setup.variables["params"]

  def fresh_state():
    state = train_state.init_state(jax.random.PRNGKey(0), lambda _: params, tx, cfg,
                             jax.random.PRNGKey(1))
    state = state._replace(selector_state=selectors.reducr.ReducrState(setup.log_w0),
                           holdout_loss=jnp.asarray(setup.holdout_loss))
    return flax.jax_utils.replicate(state, devices)

  return step, fresh_state, cfg


def host_batch(setup: Setup, x, y, index) -> dict:
  """The pmapped step's batch as the trainer builds it: table rows gathered on the host."""
  return {"x": x[None], "y": y[None], "ref_losses": setup.table[index][None]}


def torch_optimizer(model, config):
  """``torch.optim.AdamW`` with the config's learning rate and weight decay."""
  torch = import_torch()
  if config.optimizer.grad_clip_norm > 0:
    raise ValueError("config.optimizer.grad_clip_norm must be 0 for this comparison")
  return torch.optim.AdamW(model.parameters(), lr=config.optimizer.learning_rate,
                           weight_decay=config.optimizer.weight_decay)


# ---------------------------------------------------------------------------------------
# Equality checks (run before timing, and by tests/test_benchmarks_torch.py).


def check_selection(setup: Setup, atol: float = 1e-5) -> dict[str, float]:
  """Runs both selection steps on the same inputs; asserts equal work.

  Checks: the same selected indices (as a set: near-equal scores may swap), the same model losses' effect
  (α increment ``Σ_sel (R − h)`` vs ``mwu.class_objective``), the same class weights
  after the update (``softmax(−η α)`` vs ``mwu.weights(log_w)``), and that the weights
  were not uniform (the check would not test the weighting otherwise).

  Returns:
    ``{"max_alpha_diff", "max_weight_diff", "weight_spread"}``.

  Raises:
    AssertionError: on any mismatch.
  """
  select = make_jax_selection(setup.apply_fn, setup.k, setup.eta)
  sel, log_w, alpha = select(setup.variables["params"], setup.log_w0, setup.x, setup.y,
                             setup.index, setup.table, setup.holdout_loss)
  model = setup.torch_model().eval()
  data, target, gidx = setup.torch_inputs()
  table_t, h_t = setup.torch_table()
  t_select = TorchReducrSelection(setup.eta, setup.alpha0)
  before = t_select.losses.clone()
  t_sel, t_w_used = t_select(setup.k, data, target, gidx, model, table_t, h_t)
  w_used = np.asarray(mwu.weights(setup.log_w0))
  np.testing.assert_allclose(t_w_used.numpy(), w_used, atol=1e-6, err_msg="weights used")
  # The same k points; their order may differ where two scores differ only by the two
  # frameworks' float rounding (seen at B = 32 768: a few adjacent swaps).
  np.testing.assert_array_equal(np.sort(t_sel.numpy()), np.sort(np.asarray(sel)),
                                err_msg="selected indices")
  t_alpha = (t_select.losses - before).numpy()
  alpha = np.asarray(alpha)
  scale = max(1.0, float(np.max(np.abs(alpha))))
  np.testing.assert_allclose(t_alpha, alpha, atol=atol * scale, err_msg="alpha")
  weights = np.asarray(mwu.weights(log_w))
  np.testing.assert_allclose(t_select.weights(), weights, atol=atol, err_msg="class weights")
  spread = float(w_used.max() / w_used.min())
  assert spread > 1.5, f"class weights almost uniform (max/min {spread:.2f})"
  return {"max_alpha_diff": float(np.max(np.abs(t_alpha - alpha))),
          "max_weight_diff": float(np.max(np.abs(t_select.weights() - weights))),
          "weight_spread": spread}


def check_train_step(setup: Setup, config, steps: int = 3, atol: float = 1e-5,
                     rtol: float = 0.1, loss_rtol: float = 0.01) -> dict[str, float]:
  """Runs ``steps`` train steps of both implementations from the same state and batches.

  Every step must select the same indices, give the same class weights and the same loss
  on the selected points (before the update; ``loss_rtol``). After the last step the parameter
  changes must agree as a whole: ``‖Δθ_jax − Δθ_torch‖₂ ≤ rtol · ‖Δθ_torch‖₂`` over all
  entries. Entry-wise equality is too strict for a deep ReLU net in float32: a
  pre-activation within rounding of 0 on one selected point takes the ReLU's other branch
  in one framework, which changes that layer's and the earlier layers' gradients (by up
  to ~10 % of an entry in the ResNet, where JAX's eager and jitted gradients differ the
  same way; a 1 % input perturbation removes it), and Adam's first steps move every entry
  by about ``lr`` in the direction of its gradient's sign, so such entries end up ~2·lr
  apart. The fraction of entries within ``atol``, the largest difference and the largest
  per-tensor relative difference are reported.

  Returns:
    ``{"max_weight_diff", "max_loss_diff", "param_change_diff", "max_tensor_change_diff",
    "param_fraction_within_atol", "max_param_diff", "max_param_change"}`` (the last: how
    far AdamW moved the parameters).

  Raises:
    AssertionError: on any mismatch.
  """
  step, fresh_state, cfg = jax_step_parts(setup, config)
  state = fresh_state()
  model = setup.torch_model()
  optimizer = torch_optimizer(model, config)
  t_select = TorchReducrSelection(setup.eta, setup.alpha0)
  table_t, h_t = setup.torch_table()
  batches = ([(setup.x, setup.y, setup.index)] + list(setup.batches))[:steps]
  if len(batches) < steps:
    raise ValueError(f"steps must be at most {len(batches)} for this setup, got {steps}")
  weight_diff = loss_diff = 0.0
  for i, (x, y, index) in enumerate(batches):
    state, metrics = step(state, host_batch(setup, x, y, index), None)
    t_sel, t_loss = torch_train_step(t_select, model, optimizer, cfg.k,
                                     *setup.torch_inputs(x, y, index), table_t, h_t,
                                     setup.spec.has_batch_norm)
    np.testing.assert_array_equal(np.sort(t_sel.numpy()),
                                  np.sort(np.asarray(metrics["selected_indices"][0])),
                                  err_msg=f"selected indices at step {i}")
    w = np.asarray(metrics["class_weights"][0])
    np.testing.assert_allclose(t_select.weights(), w, atol=atol,
                               err_msg=f"class weights at step {i}")
    loss = float(metrics["selected_loss"][0])
    t_loss = float(t_loss.detach())
    np.testing.assert_allclose(t_loss, loss, rtol=loss_rtol,
                               err_msg=f"loss on the selected points at step {i}")
    weight_diff = max(weight_diff, float(np.max(np.abs(t_select.weights() - w))))
    loss_diff = max(loss_diff, abs(t_loss - loss))
  # Not flax.jax_utils.unreplicate: with more local devices than the pmap's one, it returns
  # the [1, ...] shard.
  new_vars = dict(setup.variables, params=jax.tree.map(lambda a: np.asarray(a)[0],
                                                       state.params))
  before = flax_as_torch_state(setup.variables, model)
  after = flax_as_torch_state(new_vars, model)
  torch_after = {key: v.detach().numpy() for key, v in model.state_dict().items()}
  keys = [key for key in after if not np.array_equal(before[key], torch_after[key])]
  jax_change = np.concatenate([(after[key] - before[key]).ravel() for key in keys])
  torch_change = np.concatenate([(torch_after[key] - before[key]).ravel() for key in keys])
  diffs = np.abs(jax_change - torch_change)
  relative = float(np.linalg.norm(jax_change - torch_change) / np.linalg.norm(torch_change))
  per_tensor = max(float(np.linalg.norm(after[key] - torch_after[key])
                         / np.linalg.norm(torch_after[key] - before[key])) for key in keys)
  assert relative <= rtol, (
      f"the parameter changes after {steps} steps differ by {relative:.1%} (> {rtol:.0%})")
  return {"max_weight_diff": weight_diff, "max_loss_diff": loss_diff,
          "param_change_diff": relative, "max_tensor_change_diff": per_tensor,
          "param_fraction_within_atol": float(np.mean(diffs <= atol)),
          "max_param_diff": float(diffs.max()),
          "max_param_change": float(np.max(np.abs(torch_change)))}


# ---------------------------------------------------------------------------------------
# Timing.


def timed_calls(setup: Setup, config) -> dict[str, Callable[[], Any]]:
  """name → function of no arguments running one step, carrying its state between calls.

  JAX calls return their outputs (waited for by ``harness.time_call``); torch calls run
  synchronously on the CPU.
  """
  params = setup.variables["params"]
  dev = lambda a: jax.device_put(jnp.asarray(a))  # noqa: E731
  x, y, index, table, h = map(dev, (setup.x, setup.y, setup.index, setup.table,
                                    setup.holdout_loss))
  select = make_jax_selection(setup.apply_fn, setup.k, setup.eta)
  log_w = setup.log_w0

  def jax_selection():
    nonlocal log_w
    sel, log_w, alpha = select(params, log_w, x, y, index, table, h)
    return sel, log_w, alpha

  data, target, gidx = setup.torch_inputs()
  table_t, h_t = setup.torch_table()
  sel_model = setup.torch_model().eval()
  official = TorchReducrSelection(setup.eta, setup.alpha0)
  topk = TorchReducrSelection(setup.eta, setup.alpha0, use_topk=True)

  def torch_selection():
    return official(setup.k, data, target, gidx, sel_model, table_t, h_t)

  def torch_selection_topk():
    return topk(setup.k, data, target, gidx, sel_model, table_t, h_t)

  step, fresh_state, cfg = jax_step_parts(setup, config)
  host_state, dev_state = fresh_state(), fresh_state()
  dev_batch = jax.tree.map(dev, host_batch(setup, setup.x, setup.y, setup.index))

  def jax_step_host():
    nonlocal host_state
    host_state, metrics = step(host_state, host_batch(setup, setup.x, setup.y, setup.index),
                               None)
    return host_state, metrics

  def jax_step_device():
    nonlocal dev_state
    dev_state, metrics = step(dev_state, dev_batch, None)
    return dev_state, metrics

  step_model = setup.torch_model()
  optimizer = torch_optimizer(step_model, config)
  step_select = TorchReducrSelection(setup.eta, setup.alpha0)

  def torch_step():
    return torch_train_step(step_select, step_model, optimizer, cfg.k, data, target, gidx,
                            table_t, h_t, setup.spec.has_batch_norm)[0]

  return {"selection/jax": jax_selection,
          "selection/torch": torch_selection,
          "selection/torch_topk": torch_selection_topk,
          "train_step/jax": jax_step_host,
          "train_step/jax_device_batch": jax_step_device,
          "train_step/torch": torch_step}


IMPL_LABELS = {
    "selection/jax": "jax: jit(reducr_jax.core.selection + mwu)",
    "selection/torch": "torch eager, official (argsort)",
    "selection/torch_topk": "torch eager, torch.topk",
    "train_step/jax": "jax: selection_step.make_train_step (pmap, 1 device; host batch)",
    "train_step/jax_device_batch": "jax: selection_step.make_train_step (batch on device)",
    "train_step/torch": "torch eager, official + AdamW",
}
BASELINE = {"selection": "selection/jax", "train_step": "train_step/jax"}


def benchmark_model(setup: Setup, config, rounds: int, target_s: float,
                    rng: np.random.Generator) -> tuple[list[dict], dict]:
  """Warms up every call, then times them in shuffled interleaved rounds.

  Each timing runs enough back-to-back calls to last about ``target_s`` (the same number
  for every call of this model). Ratios are torch / jax of the same part.

  Returns:
    ``(rows, info)``: one row per call (with its first-call time); ``info`` with the calls
    per timing.
  """
  calls = timed_calls(setup, config)
  first, warm = {}, {}
  for name, fn in calls.items():
    first[name] = harness.time_call(fn)          # compile / first allocations
    harness.time_call(fn, 3)
    warm[name] = harness.time_call(fn, 3)
  per_timing = max(1, int(round(target_s / max(min(warm.values()), 1e-6))))
  times = harness.round_robin(calls, rounds, rng, per_timing)
  rows = []
  for name, seconds in times.items():
    part = name.split("/")[0]
    row = {"model": setup.spec.name, "batch_size": setup.spec.batch_size, "k": setup.k,
           "part": part, "impl": name, "label": IMPL_LABELS[name],
           **harness.summarize(seconds, "timings"), "first_call_s": first[name]}
    if name != BASELINE[part]:
      r = harness.ratios(seconds, times[BASELINE[part]])
      row["ratio_to_jax"], row["ratio_of_mins_to_jax"] = r["ratio"], r["ratio_of_mins"]
    rows.append(row)
  return rows, {"calls_per_timing": per_timing}


def markdown(meta: dict, rows: list[dict], checks: dict) -> str:
  """The results table with the machine and check lines."""
  lines = [
      "# REDUCR step: reducr_jax vs eager PyTorch (official-code re-implementation)", "",
      harness.machine_line(meta, ("flax", "torch")) + " "
      + harness.load_line(meta),
      f"Threads: XLA:CPU its default pool over the {meta['cpu_usable']} usable core(s) "
      f"(XLA_FLAGS={meta['xla_flags']!r}); torch.set_num_threads({meta['torch_threads']}), "
      f"interop {meta['torch_interop_threads']}. {meta['rounds']} shuffled interleaved "
      "rounds per model; \"÷ jax\" = median / median of the first jax row of the same "
      "part, i.e. torch / jax for the torch rows (min / min in brackets).", "",
      "| model | B | k | part | implementation | ms (median) | ms (p25–p75) | ms (min) "
      "| ÷ jax | 1st call s |",
      "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    ratio = ""
    if "ratio_to_jax" in r:
      ratio = f"{r['ratio_to_jax']:.2f} ({r['ratio_of_mins_to_jax']:.2f})"
    lines.append(f"| {r['model']} | {r['batch_size']} | {r['k']} | {r['part']} | "
                 f"{r['label']} | {r['median_ms']:.3f} | {r['p25_ms']:.3f}–{r['p75_ms']:.3f} "
                 f"| {r['min_ms']:.3f} | {ratio} | {r['first_call_s']:.2f} |")
  lines += ["", "Equality checks before timing (same inputs, same initial weights):", ""]
  for model, c in checks.items():
    s, t = c["selection"], c["train_step"]
    lines.append(
        f"- {model}: same {c['k']} selected indices; α diff {s['max_alpha_diff']:.1e}, "
        f"class-weight diff {s['max_weight_diff']:.1e} (weights max/min "
        f"{s['weight_spread']:.2f}); after {c['steps']} train steps same indices every "
        f"step, weight diff {t['max_weight_diff']:.1e}, loss diff {t['max_loss_diff']:.1e}; "
        f"parameter changes differ by {t['param_change_diff']:.2%} (‖Δjax − Δtorch‖ / "
        f"‖Δtorch‖; worst tensor {t['max_tensor_change_diff']:.2%}), "
        f"{t['param_fraction_within_atol']:.2%} of entries within 1e-5, max diff "
        f"{t['max_param_diff']:.1e} (AdamW moved them by up to {t['max_param_change']:.1e}).")
  return "\n".join(lines) + "\n"


def main() -> None:
  """Parses flags, checks equality, times both implementations, prints and writes results."""
  parser = harness.argument_parser(__doc__)
  parser.add_argument("--quick", action="store_true",
                      help="5 rounds, ResNet B = 64: a smoke run (about a minute)")
  parser.add_argument("--models", type=harness.comma_list, default=None,
                      help="comma-separated, among mlp, resnet, cnn (default: mlp,resnet, or "
                           "mlp,cnn when reducr_jax/models/resnet.py is missing)")
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help="trainer config: optimizer and selection settings")
  parser.add_argument("--eta", type=float, default=None, help="η (default: the config's)")
  parser.add_argument("--rounds", type=int, default=None, help="default 20 (--quick: 5)")
  parser.add_argument("--target_ms", type=float, default=20.0,
                      help="about this long per timing (back-to-back calls)")
  parser.add_argument("--check_steps", type=int, default=3,
                      help="train steps compared before timing")
  parser.add_argument("--mlp_batch", type=int, default=None,
                      help="B of the mlp (default 320), e.g. 32768 for the selection at scale")
  parser.add_argument("--resnet_width", type=int, default=16)
  parser.add_argument("--resnet_batch", type=int, default=None, help="default 128 (--quick: 64)")
  parser.add_argument("--cnn_features", type=harness.int_list, default="8,16,32")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="default: the CPU cores this process may use (as XLA:CPU)")
  parser.add_argument("--one_core", action="store_true",
                      help="pin the process to one CPU core (os.sched_setaffinity, before the "
                           "JAX backend starts) and torch.set_num_threads(1). XLA_FLAGS "
                           "intra_op_parallelism_threads=1 does not do it: jax 0.10's XLA:CPU "
                           "still used 1.6 cores of 2 with it")
  harness.add_out_flag(parser, "benchmarks/results/torch_selection.json "
                               "(torch_selection_1core.json with --one_core)")
  args = parser.parse_args()
  torch = import_torch()
  models = args.models or (["mlp", "resnet"] if resnet_available() else ["mlp", "cnn"])
  if not resnet_available():
    # TODO(lead): rerun with --models mlp,resnet once reducr_jax/models/resnet.py lands.
    print("reducr_jax/models/resnet.py not found: timing mlp and cnn only (TODO: resnet)")
  for name in models:
    if name not in MODEL_NAMES:
      raise ValueError(f"--models entries must be among {list(MODEL_NAMES)}, got {name!r}")
  rounds = args.rounds or (5 if args.quick else 20)
  config = configuration.load_config(args.config)
  eta = float(config.selection.eta if args.eta is None else args.eta)
  if args.one_core:  # before machine_info starts the CPU client, which sizes its pool
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  info = harness.machine_info(("optax", "torch"))
  start = time.perf_counter()
  torch.set_num_threads(args.torch_threads or info["cpu_usable"])
  meta = {**info, "torch_threads": torch.get_num_threads(),
          "torch_interop_threads": torch.get_num_interop_threads(), "rounds": rounds,
          "eta": eta, "flags": harness.flag_values(args),
          "optimizer": config.optimizer.to_dict()}
  rng = np.random.default_rng(0)
  rows, checks, per_model = [], {}, {}
  for name in models:
    batch = args.mlp_batch if name == "mlp" else None
    if name == "resnet":
      batch = args.resnet_batch or (64 if args.quick else 128)
    spec = make_spec(name, batch_size=batch, cnn_features=args.cnn_features,
                     resnet_width=args.resnet_width)
    setup = build_setup(spec, eta=eta, extra_batches=max(0, args.check_steps - 1))
    t0 = time.perf_counter()
    checks[name] = {"k": setup.k, "steps": args.check_steps,
                    "selection": check_selection(setup),
                    "train_step": check_train_step(setup, config, args.check_steps)}
    print(f"{name}: equality checks passed ({time.perf_counter() - t0:.1f} s): "
          f"{checks[name]}", flush=True)
    model_rows, per_model[name] = benchmark_model(setup, config, rounds,
                                                  args.target_ms / 1e3, rng)
    rows += model_rows
  harness.finish_info(meta, start)
  harness.write_results(args.out,
                        "torch_selection" + ("_1core" if args.one_core else ""),
                        {"meta": meta, "checks": checks, "per_model": per_model,
                         "rows": rows}, markdown(meta, rows, checks))


if __name__ == "__main__":
  main()
