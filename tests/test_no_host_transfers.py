"""The trainer's pmapped step runs without host round trips and is one compiled program.

With the state, batch and reference parameters on the devices, a few steps of
``selection_step.make_train_step`` run under ``jax.transfer_guard_device_to_host("disallow")`` and
``jax.transfer_guard_host_to_device("disallow")``: any implicit host → device copy (a NumPy
constant or batch shipped per call) raises. On CPU, device arrays live in host memory and
JAX never reports a device → host transfer, so the step's jaxpr (nested jaxprs included)
and its lowered program are also checked for host callbacks (``pure_callback``,
``io_callback``, ``jax.debug.*``) and infeed/outfeed; on GPU/TPU the guard checks that too.
XLA compiles the step once: the first call compiles one program, the next calls none
(counted with ``jax.monitoring``'s backend-compile events). The guarded steps must give
bit-identical results to the same steps fed NumPy batches from the host, as the trainer
feeds them (table variants). Models: a tiny MLP (precomputed table and online experts)
and a tiny ResNet (width 4, one stage, 8×8 uint8 images, ``crop_flip`` augmentation,
cross-device batch norm). A last test runs the trainer's own loop and counts the step's
compiles: once, although the state is placed by the trainer and later returned by the
step, and the class-holdout loss is re-placed every epoch.
"""

from __future__ import annotations

import contextlib
import functools
import os

import flax.jax_utils
import jax
import ml_collections
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import models
from reducr_jax.core import stacked_experts
from reducr_jax.train import optimizers
from reducr_jax.train import selection_step
from reducr_jax.train import train_state
from reducr_jax.train import trainer as train

pytestmark = pytest.mark.usefixtures("no_compile_cache")   # these tests count backend compiles

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                      "default.py")
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
C, B, K, N_DEVICES, STEPS = 4, 32, 8, 4, 3


@contextlib.contextmanager
def count_compiles():
  """Yields a list that grows by one entry per XLA backend compile inside the block."""
  events: list[float] = []

  def listener(name, seconds, **_):
    if name == BACKEND_COMPILE:
      events.append(seconds)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def setup(model: str, reference: str):
  """(step, state, host batch, ref params, devices) of a tiny config on N_DEVICES devices."""
  config = configuration.load_config(CONFIG)
  config.batch_size = B
  config.selection.percent_selected = K / B
  config.selection.method = "reducr"
  if model == "mlp":
    config.model.hidden = (16,)
    shape, dtype = (12,), np.float32
  else:
    config.model = ml_collections.ConfigDict(
        {"name": "resnet18", "stem": "cifar", "width": 4, "stage_sizes": (1,), "mean": (),
         "std": (), "dtype": "float32", "pretrained": "", "pretrained_head": False})
    config.dataset.augment = "crop_flip"
    shape, dtype = (8, 8, 3), np.uint8
  devices = jax.local_devices()[:N_DEVICES]
  x0 = np.zeros((1,) + shape, dtype)
  module = models.create_model(config.model, C)
  init_impl = models.init_rng_impl(config.model)
  fns = models.model_fns(module, x0, axis_name=selection_step.AXIS, init_impl=init_impl)
  tx = optimizers.make_optimizer(config.optimizer)
  cfg = train_state.StepConfig.from_config(config, C, N_DEVICES, reference, (1,) * C)
  state = train_state.init_state(jax.random.PRNGKey(0), jax.jit(fns.init), tx, cfg,
                           jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 256, (B,) + shape).astype(np.uint8) if dtype == np.uint8
       else rng.normal(size=(B,) + shape).astype(np.float32))
  batch = {"x": x, "y": rng.integers(0, C, B).astype(np.int32)}
  ref_loss_fn, ref = None, None
  if reference == "table":
    batch["ref_losses"] = rng.uniform(0, 2, (B, C)).astype(np.float32)
  else:
    ref_fns = models.model_fns(module, x0, init_impl=init_impl)
    ref_loss_fn = functools.partial(stacked_experts.expert_losses, ref_fns.apply, strategy="vmap")
    ref = models.variables(*stacked_experts.init_stacked(ref_fns.init, jax.random.PRNGKey(2), C))
  step = selection_step.make_train_step(fns, ref_loss_fn, tx, cfg, devices)
  host_batch = jax.tree.map(lambda a: a.reshape((N_DEVICES, B // N_DEVICES) + a.shape[1:]),
                            batch)
  return step, state, host_batch, ref, devices


def on_devices(tree, devices):
  """``[n, ...]`` host arrays → arrays sharded over ``devices`` along the leading axis, with
  the sharding the pmapped step gives its outputs (mesh axis ``selection_step.AXIS``), so the state
  a step returns has the same sharding as the state it was given."""
  mesh = jax.sharding.Mesh(np.array(devices), (selection_step.AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(selection_step.AXIS))
  return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def replicated(tree, devices):
  """``tree`` stacked ``n`` times, placed like :func:`on_devices`."""
  return flax.jax_utils.replicate(tree, devices, axis_name=selection_step.AXIS)


def primitive_names(jaxpr) -> set[str]:
  """Every primitive in a (closed) jaxpr, nested jaxprs (jit, shard_map, cond, scan, …)
  included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
          names |= primitive_names(v)
  return names


def host_primitives(names: set[str]) -> set[str]:
  """The primitives among ``names`` that move data between device and host (host
  callbacks: ``pure_callback``, ``io_callback``, ``debug_callback``, ``debug_print``;
  ``infeed``/``outfeed``)."""
  return {n for n in names
          if "callback" in n or n.startswith("debug") or n in ("infeed", "outfeed")}


@pytest.mark.parametrize("model,reference", [("mlp", "table"), ("mlp", "online"),
                                             ("resnet", "table")])
def test_step_has_no_host_round_trips_and_compiles_once(model, reference):
  step, state, host_batch, ref, devices = setup(model, reference)
  # Everything the step reads is placed on the devices before the guards go up.
  p_state = replicated(state, devices)
  p_batch = on_devices(host_batch, devices)
  p_ref = None if ref is None else replicated(ref, devices)
  jax.block_until_ready((p_state, p_batch, p_ref))

  # No host callback/infeed/outfeed anywhere in the step. (On CPU, device arrays live in
  # host memory and the device → host guard below never fires, so this is the CPU check;
  # on GPU/TPU the guard checks it too.)
  names = primitive_names(jax.make_jaxpr(step)(p_state, p_batch, p_ref))
  assert {"psum", "all_gather"} <= names or {"psum_invariant", "all_gather"} <= names, names
  assert not host_primitives(names), host_primitives(names)

  per_call = []
  with jax.transfer_guard_device_to_host("disallow"), \
       jax.transfer_guard_host_to_device("disallow"):
    for _ in range(STEPS):
      with count_compiles() as compiles:
        p_state, metrics = step(p_state, p_batch, p_ref)
        jax.block_until_ready((p_state, metrics))
      per_call.append(len(compiles))
  assert per_call == [1] + [0] * (STEPS - 1), per_call   # one program, compiled once
  assert "callback" not in step.lower(p_state, p_batch, p_ref).as_text().lower()

  assert np.all(np.asarray(p_state.step) == STEPS)
  assert int(np.asarray(p_state.num_skipped).max()) == 0
  if reference == "table":
    # The trainer's way: the same steps fed NumPy batches from the host (a host → device
    # copy every call, and a second program for uncommitted inputs) give the same bits.
    h_state = replicated(state, devices)
    for _ in range(STEPS):
      h_state, h_metrics = step(h_state, host_batch, p_ref)
    np.testing.assert_array_equal(np.asarray(metrics["selected_indices"]),
                                  np.asarray(h_metrics["selected_indices"]))
    for a, b in zip(jax.tree.leaves((p_state.params, p_state.model_state, p_state.selector_state)),
                    jax.tree.leaves((h_state.params, h_state.model_state, h_state.selector_state))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The steps trained: parameters moved away from their initial values.
  moved = max(float(np.abs(np.asarray(a)[0] - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(p_state.params), jax.tree.leaves(state.params)))
  assert moved > 1e-4


def test_checks_can_fail():
  """The host → device guard rejects the trainer's NumPy batch, and the jaxpr check sees
  a host callback (``jax.debug.print``) in an otherwise identical function."""
  step, state, host_batch, _, devices = setup("mlp", "table")
  p_state = replicated(state, devices)
  with jax.transfer_guard_host_to_device("disallow"):
    with pytest.raises(Exception, match="(?i)disallowed host-to-device"):
      step(p_state, host_batch, None)

  def noisy(a):
    jax.debug.print("{}", a.sum())
    return a * 2

  x = np.ones((N_DEVICES, 3), np.float32)
  assert not host_primitives(primitive_names(jax.make_jaxpr(jax.pmap(lambda a: a * 2))(x)))
  assert host_primitives(primitive_names(jax.make_jaxpr(jax.pmap(noisy))(x)))


def test_trainer_compiles_its_step_once(tmp_path, monkeypatch):
  """The trainer's own loop: the pmapped train step compiles on its first call only."""
  per_call = []
  make = selection_step.make_train_step

  def counting_make_train_step(*args, **kwargs):
    step = make(*args, **kwargs)

    def counted(*a):
      with count_compiles() as compiles:
        out = step(*a)
      per_call.append(len(compiles))
      return out

    return counted

  monkeypatch.setattr(selection_step, "make_train_step", counting_make_train_step)
  config = configuration.load_config(CONFIG)
  config.model.hidden = (16,)
  config.batch_size = B
  config.selection.percent_selected = K / B
  config.selection.method = "reducr"
  config.selection.holdout_every = 2       # the class-holdout loss is re-placed at step 2
  config.experts.num_steps = 2
  config.experts.eval_every = 2
  config.num_steps = 4
  config.num_devices = 2
  for field in ("eval_every", "log_every", "checkpoint_every"):
    config[field] = 100
  train.train_and_evaluate(config, str(tmp_path))
  assert per_call == [1, 0, 0, 0], per_call
