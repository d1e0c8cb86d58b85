"""C experts stacked on a leading axis: state, initialisation, strategies, losses.

The C experts (:mod:`reducr_jax.core.class_weighted_losses`, eq. 8) share one architecture,
so their parameters (and optimizer states) are stacked on a leading axis of size C and
all C train together in one step (:mod:`reducr_jax.train.experts_step`). Their losses on a
batch form the ``[B, C]`` matrix that :mod:`reducr_jax.core.selection` consumes, obtained in
one of three ways that agree to float tolerance:

  * online from the stacked models — :func:`expert_losses` with ``strategy``
    ``"vmap"`` (best on GPU/TPU; with ``chunk`` = n, ``n`` experts per ``vmap`` and a
    ``lax.map`` over the chunks, so only n copies of the activations are live), ``"map"``
    (``lax.map``, a sequential loop inside one compiled program) or ``"loop"`` (a Python
    loop unrolled at trace time); on CPU, ``vmap`` over conv nets lowers to grouped
    convolutions that are many times slower, so use ``"map"`` there (see
    :func:`default_strategy`). Training (:func:`reducr_jax.train.experts_step.experts_train_step`)
    takes the same strategies (:func:`map_experts`);
  * precomputed once over the whole training set as an ``[N, C]`` table
    (:mod:`reducr_jax.train.references`), the official implementation's default, then gathered;
  * one multi-head model (:class:`MultiHead`: shared trunk, C heads), trained with the
    sum of the C γ-weighted losses
    (:func:`reducr_jax.core.class_weighted_losses.multihead_loss`) — the paper's future work.

``apply_fn(params, x) -> logits [B, K]`` is any pure function of one model's parameters
(e.g. ``lambda p, x: model.apply({"params": p}, x)``); K is the number of classes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax.core import checks
from reducr_jax.core.class_weighted_losses import cross_entropy

ApplyFn = Callable[[Any, jax.Array], jax.Array]
TrainApplyFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
InitFn = Callable[[jax.Array], Any]

STRATEGIES = ("vmap", "map", "loop")


class ExpertsState(NamedTuple):
  """Stacked parameters and optimizer states of C experts (leading axis C everywhere).

  ``model_state`` holds the stacked non-parameter collections of models that have them
  (batch-norm statistics, ``{"batch_stats": ...}``), ``None`` for stateless models.
  """
  params: Any
  opt_state: Any
  model_state: Any = None


def num_experts(stacked_params) -> int:
  """C, the leading-axis size of stacked expert parameters."""
  sizes = {x.shape[0] for x in jax.tree.leaves(stacked_params)}
  if len(sizes) != 1:
    raise ValueError(f"stacked_params must share one leading axis C, got sizes {sorted(sizes)}")
  return sizes.pop()


def init_stacked(init_fn: InitFn, rng: jax.Array, num: int) -> Any:
  """Initialises ``num`` independent models; every leaf gets a leading axis of size ``num``.

  Args:
    init_fn: ``rng -> params`` of one model.
    rng: PRNG key, split into ``num`` keys.
    num: C.
  """
  if int(num) != num or num < 1:
    raise ValueError(f"num must be a positive int, got {num!r}")
  return jax.jit(jax.vmap(init_fn))(jax.random.split(rng, int(num)))


def init_experts(init_fn: InitFn, tx: optax.GradientTransformation, rng: jax.Array,
                 num: int) -> ExpertsState:
  """Stacked parameters and optimizer states for ``num`` experts.

  ``init_fn(rng)`` returns one model's params, or a ``(params, model_state)`` pair
  (:attr:`reducr_jax.models.ModelFns.init`) for models with batch norm.
  """
  out = init_stacked(init_fn, rng, num)
  params, model_state = out if isinstance(out, tuple) else (out, None)
  return ExpertsState(params, jax.vmap(tx.init)(params), model_state)


def _check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")


def map_experts(fn: Callable[[Any], Any], stacked: Any, strategy: str = "vmap",
                chunk: int = 0) -> Any:
  """``fn`` applied to each expert's slice of ``stacked``, outputs stacked on axis 0.

  The one place the stacked-expert strategies live; every strategy computes the same
  values (up to float summation order), they differ in speed and live memory.

  Args:
    fn: one expert's ``slice -> outputs`` (any pytrees); must be traceable.
    stacked: pytree whose leaves all have the leading axis C (``None`` leaves allowed).
    strategy: ``"vmap"`` (one batched program: C copies of every activation live),
      ``"map"`` (``lax.map``: one expert at a time inside one program) or ``"loop"``
      (Python loop unrolled at trace time).
    chunk: with ``"vmap"``, ``0`` (or ≥ C) = all C experts in one ``vmap``; ``n`` in
      ``[1, C)`` = ``n`` experts per ``vmap``, the chunks run one after another in a
      ``lax.map`` (``batch_size=n``), so n copies of the activations are live.

  Returns:
    ``fn``'s outputs with a leading axis C.
  """
  _check_strategy(strategy)
  if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 0:
    raise ValueError(f"chunk must be an int >= 0, got {chunk!r}")
  c = num_experts(stacked)
  if strategy == "vmap" and (chunk == 0 or chunk >= c):
    return jax.vmap(fn)(stacked)
  if strategy == "vmap":
    return jax.lax.map(fn, stacked, batch_size=int(chunk))
  if strategy == "map":
    return jax.lax.map(fn, stacked)
  outs = [fn(jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(c)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def expert_losses(apply_fn: ApplyFn, stacked_params, x: jax.Array, y: jax.Array,
                  strategy: str = "vmap", chunk: int = 0) -> jax.Array:
  """Loss of every point under every expert → ``[B, C]``.

  Args:
    apply_fn: ``(params, x) -> logits [B, K]`` of one model.
    stacked_params: parameters with leading axis C.
    x: ``[B, ...]``; y: ``int[B]``.
    strategy: ``"vmap"`` (one batched program; best on GPU/TPU and for MLPs), ``"map"``
      (``lax.map``: C sequential applications in one program, small to compile) or
      ``"loop"`` (a Python loop unrolled at trace time; one program per expert, slow to compile).
    chunk: experts per ``vmap`` (``0`` = all); see :func:`map_experts`.

  Returns:
    ``[B, C]`` cross-entropy losses, column c from expert c.
  """
  _check_strategy(strategy)                    # the cheap argument first
  b = np.shape(x)[0] if np.ndim(x) else None
  checks.check_labels("y", y, b)               # int[B], B = x's first axis
  try:                                         # one expert on x, abstractly: one line
    jax.eval_shape(lambda p: apply_fn(jax.tree.map(lambda a: a[0], p), x), stacked_params)
  except (TypeError, ValueError) as e:
    raise ValueError(f"apply_fn(stacked_params[c], x) fails for x of shape {np.shape(x)}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  loss_of = lambda p: cross_entropy(apply_fn(p, x), y)  # noqa: E731
  return map_experts(loss_of, stacked_params, strategy, chunk).T


def default_strategy(backend: str | None = None) -> str:
  """``"vmap"`` on GPU/TPU, ``"map"`` on CPU.

  On CPU, ``vmap`` over C conv nets lowers to grouped convolutions. Measured on 2 cores
  (``benchmarks/experts.py``, C = 10, B = 320, ratios to one model's forward): a small CNN
  costs 16.9× with ``vmap``, 9.3× with ``map``, 10.7× with ``loop`` (a wider CNN: 45.6× vs
  9.4× vs 10.9×); an MLP costs 6.4× / 8.5× / 7.6×. ``map`` is never far from the best and
  compiles fastest, so it is the CPU default; pass ``vmap`` explicitly for MLPs on CPU.
  For training, ``map`` runs each expert at a plain step's rate only with canonical
  convolutions inside its loop (``canonical_convs`` of
  :func:`reducr_jax.train.experts_step.experts_train_step`, on by default on CPU):
  ``benchmarks/stage1.py`` times it per expert against one plain step.
  """
  backend = backend or jax.default_backend()
  return "map" if backend == "cpu" else "vmap"


class MultiHead(nn.Module):
  """A shared trunk and ``num_heads`` linear heads → ``[B, num_heads, num_classes]``.

  Attributes:
    trunk: module mapping ``x`` to features ``[B, F]`` (e.g. ``MLP(num_outputs=None)``).
    num_heads: C, one head per expert class.
    num_classes: K, the label space of each head.
  """
  trunk: nn.Module
  num_heads: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features = self.trunk(x, train=train)
    logits = nn.Dense(self.num_heads * self.num_classes, name="heads")(features)
    return logits.reshape((x.shape[0], self.num_heads, self.num_classes))
