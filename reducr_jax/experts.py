"""Amortised class-irreducible loss models ("experts"), REDUCR eq. 8 and Algorithm 3.

Expert ``c`` is trained once, on the holdout set, with the class-``c`` examples
up-weighted by ``γ``:

    φ_c = argmin_φ Σ_{(x, y) ∈ D_ho} (1 + γ · 1[y = c]) · L[y | x, φ]                (eq. 8)

(γ = 9 for vision and 4 for text in the paper; the official code's per-example weight is
``1 + γ = 10``). With ``γ = 0`` and a single expert this is RHO-LOSS's irreducible-loss
model trained on all the holdout data.

The C experts share one architecture, so their parameters (and optimizer states) are
stacked on a leading axis of size C and all C train together in one ``vmap``-ed step.
Their losses on a batch form the ``[B, C]`` matrix that :mod:`reducr_jax.selection`
consumes, obtained in one of three ways that agree to float tolerance:

  * online from the stacked models — :func:`expert_losses` with ``strategy``
    ``"vmap"`` (best on GPU/TPU; with ``chunk`` = n, ``n`` experts per ``vmap`` and a
    ``lax.map`` over the chunks, so only n copies of the activations are live), ``"map"``
    (``lax.map``, a sequential loop inside one compiled program) or ``"loop"`` (a Python
    loop unrolled at trace time); on CPU, ``vmap`` over conv nets lowers to grouped
    convolutions that are many times slower, so use ``"map"`` there (see
    :func:`default_strategy`). Training (:func:`train_step`) takes the same strategies
    (:func:`map_experts`);
  * precomputed once over the whole training set as an ``[N, C]`` table
    (:func:`precompute_table`), the official implementation's default, then gathered;
  * one multi-head model (:class:`MultiHead`: shared trunk, C heads), trained with the
    sum of the C γ-weighted losses (:func:`multihead_loss`) — the paper's future work.

``apply_fn(params, x) -> logits [B, K]`` is any pure function of one model's parameters
(e.g. ``lambda p, x: model.apply({"params": p}, x)``); K is the number of classes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax import checks
from reducr_jax import conv_layout
from reducr_jax.data import groups as groups_lib

ApplyFn = Callable[[Any, jax.Array], jax.Array]
TrainApplyFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
InitFn = Callable[[jax.Array], Any]

STRATEGIES = ("vmap", "map", "loop")
# How a batch's γ-weighted losses are averaged (``config.experts.loss_normalisation``).
NORMALISATIONS = ("mean", "weight_sum")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``[..., K], int[...] → [...]``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def class_weights_for(labels: jax.Array, expert_class, gamma) -> jax.Array:
  """Per-example weights ``1 + γ · 1[y = c]`` of eq. 8 → ``[B]``."""
  checks.check_in_range("gamma", gamma, 0.0)
  return 1.0 + gamma * (labels == expert_class).astype(jnp.float32)


def class_weight_matrix(labels: jax.Array, num_experts: int, gamma) -> jax.Array:
  """Eq. 8 weights of every example for every expert: ``W[i, c] = 1 + γ · 1[y_i = c]``.

  Returns:
    ``[B, num_experts]``, column c for expert c.
  """
  checks.check_in_range("gamma", gamma, 0.0)
  return 1.0 + gamma * (labels[:, None] == jnp.arange(num_experts)[None, :]).astype(jnp.float32)


def weighted_average(per_example_loss: jax.Array, weights: jax.Array,
                     normalisation: str = "mean", axis=None) -> jax.Array:
  """Average of ``weights · per_example_loss`` over ``axis`` (all axes when ``None``).

  ``"mean"``: ``Σ_i w_i ℓ_i / n`` (n = the number of terms, this project's original
  loss); ``"weight_sum"``: ``Σ_i w_i ℓ_i / Σ_i w_i`` — PyTorch's
  ``nn.CrossEntropyLoss(weight=…)`` with ``reduction='mean'``, which the official expert
  training uses (``src/models/OneModel.py``). With weights ``1 + γ·1[y = c]`` the two
  differ by the batch-dependent factor ``n / Σ w = 1 / (1 + γ · share of class c)``.

  Args:
    per_example_loss: ``[...]`` losses; weights: same shape (or broadcastable).
    normalisation: ``"mean"`` or ``"weight_sum"``.
    axis: reduction axis (``None``: all).

  Returns:
    the reduced array (scalar for ``axis=None``).
  """
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got "
                     f"{normalisation!r}")
  weighted = weights * per_example_loss
  if normalisation == "mean":
    return jnp.mean(weighted, axis=axis)
  return jnp.sum(weighted, axis=axis) / jnp.sum(jnp.broadcast_to(weights, weighted.shape),
                                                 axis=axis)


def class_weighted_loss(per_example_loss: jax.Array, labels: jax.Array, expert_class,
                        gamma, normalisation: str = "mean") -> jax.Array:
  """Batch estimate of eq. 8 → scalar: ``mean_i (1 + γ · 1[y_i = c]) · ℓ_i``, or with
  ``normalisation="weight_sum"`` ``Σ_i w_i ℓ_i / Σ_i w_i`` (:func:`weighted_average`).

  Args:
    per_example_loss: ``[B]``.
    labels: ``int[B]``.
    expert_class: c, the class the expert is for (int or traced int scalar).
    gamma: γ ≥ 0.
    normalisation: ``"mean"`` | ``"weight_sum"`` (official).
  """
  checks.check_shape("per_example_loss", per_example_loss, (None,), "[B]")
  b = np.shape(per_example_loss)[0]
  checks.check_shape("labels", labels, (b,), f"[B={b}]")
  return weighted_average(per_example_loss, class_weights_for(labels, expert_class, gamma),
                          normalisation)


# ---------------------------------------------------------------------------------------
# C stacked experts.


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


def train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, state: ExpertsState,
               x: jax.Array, y: jax.Array, gamma, *,
               train_apply_fn: Optional[TrainApplyFn] = None,
               rng: Optional[jax.Array] = None, strategy: str = "vmap", chunk: int = 0,
               axis_name: Optional[str] = None,
               microbatches: int = 1, group_of=None,
               normalisation: str = "mean",
               canonical_convs: Optional[bool] = None) -> tuple[ExpertsState, jax.Array]:
  """One optimizer step of all C experts at once on the same holdout batch.

  Expert ``c`` minimises :func:`class_weighted_loss` with ``expert_class = c``; the C
  updates run over stacked params, optimizer states and class index with
  :func:`map_experts` (``strategy``, ``chunk``). Jit with ``apply_fn``, ``tx``,
  ``strategy`` and ``chunk`` static (e.g. ``jax.jit(functools.partial(train_step,
  apply_fn, tx))``).

  Data parallel: under ``pmap`` (or ``shard_map``) over ``axis_name``, ``x``/``y`` are
  this device's equal share of the batch; gradients and losses are averaged over the axis
  (``pmean``), so the update equals the one-device update on the whole batch (up to float
  summation order) — with batch norm, build ``train_apply_fn`` with the same
  ``axis_name`` so its statistics are those of the whole batch too.

  Args:
    apply_fn: ``(params, x) -> logits [B, K]`` of one model.
    tx: the optax optimizer (same for every expert).
    state: :class:`ExpertsState` with leading axis C.
    x: ``[B, ...]`` inputs; y: ``int[B]`` labels.
    gamma: γ ≥ 0.
    train_apply_fn: for models with state or dropout,
      ``(params, model_state, x, rng) -> (logits, new_model_state)`` in training mode
      (:attr:`reducr_jax.models.ModelFns.apply_train`); then ``apply_fn`` is unused and
      each expert's batch-norm statistics are its own (no cross-expert averaging).
    rng: key for dropout (split per expert); unused by deterministic models.
    strategy, chunk: see :func:`map_experts`.
    axis_name: the mapped device axis to average gradients over (``None``: one device).
    microbatches: m ≥ 1 dividing B: each expert's gradient is accumulated over m slices
      of B/m (``lax.scan``), so only B/m examples' activations are live — the same
      update up to float order, except that batch norm normalises (and updates its
      running statistics) per slice and dropout draws a key per slice.
    group_of: ``None`` (expert c up-weights class c), or int [K] class → group for
      ``config.dataset.groups``: expert g (C = G experts) up-weights the classes of group g.
    canonical_convs: where an expert's gradient runs inside a loop (``map``, ``vmap`` in
      chunks, ``microbatches`` > 1), emit its convolutions in NHWC / HWIO order
      (:func:`reducr_jax.conv_layout.canonical_convs`): XLA:CPU canonicalises them only
      at the top level of a program, and inside a loop falls back to a naive kernel that
      is 8–70× slower. ``None``: on the CPU backend (``jax.default_backend()``); pass the
      target's answer when compiling ahead of time for another backend.

  Returns:
    ``(new_state, losses[C])`` with each expert's γ-weighted training loss.
  """
  checks.check_in_range("gamma", gamma, 0.0)
  c = num_experts(state.params)

  m = int(microbatches)
  if m < 1 or x.shape[0] % m:
    raise ValueError(f"microbatches must be >= 1 and divide the batch {x.shape[0]}, got {m}")

  if normalisation not in NORMALISATIONS:
    raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got "
                     f"{normalisation!r}")

  # XLA:CPU's fast convolutions need canonical dimension numbers inside loops.
  in_loop = m > 1 or strategy == "map" or (strategy == "vmap" and 0 < chunk < c)
  if canonical_convs is None:
    canonical_convs = jax.default_backend() == "cpu"
  canonical = bool(canonical_convs) and in_loop

  def one(args):
    params, opt_state, model_state, expert_class, key = args
    # "weight_sum": Σwℓ / Σw over the *whole* batch (all devices, all microbatches), as on
    # one device: each slice's mean(wℓ) is scaled by B_local / pmean(Σ_local w), so the
    # pmean over devices of the microbatch average is Σ_all wℓ / Σ_all w.
    scale = 1.0
    if normalisation == "weight_sum":
      units = groups_lib.group_labels(y, group_of)
      w_sum = jnp.sum(class_weights_for(units, expert_class, gamma))
      if axis_name is not None:
        w_sum = jax.lax.pmean(w_sum, axis_name)
      scale = y.shape[0] / w_sum

    def loss_fn(p, model_state, xb, yb, key):
      if train_apply_fn is None:
        logits, new_model_state = apply_fn(p, xb), model_state
      else:
        logits, new_model_state = train_apply_fn(p, model_state, xb, key)
      loss = class_weighted_loss(cross_entropy(logits, yb),
                                 groups_lib.group_labels(yb, group_of),
                                 expert_class, gamma)
      return loss * scale, new_model_state
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if canonical:
      grad_fn = conv_layout.canonical_convs(grad_fn)
    if m == 1:
      (loss, model_state), grads = grad_fn(params, model_state, x, y, key)
    else:
      def accumulate(carry, xs):
        loss_sum, grad_sum, ms = carry
        xb, yb, i = xs
        (l, ms), g = grad_fn(params, ms, xb, yb, jax.random.fold_in(key, i))
        return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g), ms), None
      slices = (x.reshape((m, -1) + x.shape[1:]), y.reshape((m, -1)), jnp.arange(m))
      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, grads, model_state), _ = jax.lax.scan(
          accumulate, (jnp.zeros((), jnp.float32), zeros, model_state), slices)
      loss, grads = loss / m, jax.tree.map(lambda g: g / m, grads)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, c)
  if strategy == "map":
    return _update_in_place(one, state, keys)
  if strategy == "vmap" and 0 < chunk < c and c % chunk == 0:
    return _update_in_place(one, state, keys, chunk)
  params, opt_state, model_state, losses = map_experts(
      one, (state.params, state.opt_state, state.model_state,
            jnp.arange(c, dtype=jnp.int32), keys), strategy, chunk)
  return ExpertsState(params, opt_state, model_state), losses


def _update_in_place(one: Callable[[Any], Any], state: ExpertsState, keys: jax.Array,
                     chunk: int = 1) -> tuple[ExpertsState, jax.Array]:
  """``map`` (``chunk`` = 1) or ``vmap`` in chunks of ``chunk`` | C for the training step:
  a ``fori_loop`` over the chunks whose carry is the stacked state, each chunk's slice
  read, updated and written back with ``dynamic_update_slice``, in place.

  Why not ``lax.map``: it stacks its outputs into fresh buffers, a second copy of the whole
  stacked state (params + AdamW moments: 1.75 GiB for 14 ResNet-18s) that XLA cannot alias
  with the donated input.

  Why the ``lax.cond``: without it XLA fuses the reads of the *old* moments (the slice of
  the stacked ``mu``/``nu``) into the fusion that writes the new parameters, so the
  moments' in-place writes must wait for it and copy insertion copies the whole stacked
  ``mu`` and ``nu`` twice per iteration (optax AdamW; plain SGD has no moments and no
  copies). A conditional is a fusion boundary, so the chunk's slice is read into its own
  small buffer first. (``optimization_barrier`` does not help: XLA:CPU drops it before
  fusion.) XLA:CPU memory analysis, 14 small ResNets, AdamW, B = 32 in 4 slices: temp
  45.7 → 11.3 MiB, no stacked copies left; 14 ResNet-18s at 224 px: see
  ``benchmarks/README.md``.

  On CPU the loop body is no longer a program's entry computation, where XLA:CPU makes
  convolutions canonical for its Eigen kernels; :func:`train_step` therefore emits the
  gradient's convolutions canonical itself (``canonical_convs``), else each expert's step
  here ran 4–73× slower than the same step at the top level (issue 23).
  """
  c, n = keys.shape[0], int(chunk)
  if c % n:
    raise ValueError(f"chunk must divide the {c} experts for an in-place update, got {n}")
  fn = one if n == 1 else jax.vmap(one)

  def take(a, start):
    if n == 1:
      return jax.lax.dynamic_index_in_dim(a, start, 0, keepdims=False)
    return jax.lax.dynamic_slice_in_dim(a, start, n, 0)

  def put(a, v, start):
    return jax.lax.dynamic_update_slice_in_dim(a, v if n > 1 else v[None], start, 0)

  def body(j, carry):
    stacked, losses = carry
    start = (j * n).astype(jnp.int32)
    index = start if n == 1 else start + jnp.arange(n, dtype=jnp.int32)
    args = (*jax.tree.map(lambda a: take(a, start), stacked), index, take(keys, start))
    shapes = jax.eval_shape(fn, args)
    # j >= 0 always holds; XLA does not fold it, so the branch stays a conditional.
    p, o, ms, loss = jax.lax.cond(
        j >= 0, fn, lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
        args)
    stacked = jax.tree.map(lambda a, v: put(a, v, start), stacked, (p, o, ms))
    return stacked, put(losses, loss.astype(losses.dtype), start)

  stacked = (state.params, state.opt_state, state.model_state)
  (params, opt_state, model_state), losses = jax.lax.fori_loop(
      0, c // n, body, (stacked, jnp.zeros((c,), jnp.float32)))
  return ExpertsState(params, opt_state, model_state), losses


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
  convolutions inside its loop (:func:`train_step`'s ``canonical_convs``, on by default on
  CPU): ``benchmarks/stage1.py`` times it per expert against one plain step.
  """
  backend = backend or jax.default_backend()
  return "map" if backend == "cpu" else "vmap"


def precompute_table(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], x: np.ndarray,
                     y: np.ndarray, batch_size: int = 1024, start: int = 0,
                     stop: Optional[int] = None,
                     put: Callable[[np.ndarray], Any] = jnp.asarray,
                     multiple_of: int = 1,
                     report: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """One pass over a dataset → the ``[N, C]`` table of expert losses (official default).

  Args:
    loss_fn: jitted ``(x_batch, y_batch) -> [b, C]``, e.g.
      ``jax.jit(functools.partial(expert_losses, apply_fn, params, strategy=...))`` with
      the params bound, or a multi-head equivalent. Called on fixed-size batches (the
      last one zero-padded), so it compiles once.
    x: ``[N, ...]`` inputs; y: ``int[N]`` labels. Only rows ``[start, stop)`` are read,
      one batch at a time (a lazy ``x`` decodes only those).
    batch_size: evaluation batch size.
    start, stop: the rows to score (default all): what one process scores of a table
      computed in shards (:func:`reducr_jax.train_experts.precompute_table`).
    put: host batch → device array (e.g. split over the local devices).
    multiple_of: the batch (shrunk to the rows when they are fewer) stays a multiple of
      this (e.g. the devices ``put`` splits it over).
    report: called with the number of rows scored so far after each batch (progress).

  Returns:
    ``float32[stop - start, C]`` NumPy table; row ``i`` is the expert losses of example
    ``start + i``. During training gather rows with the batch's indices into the dataset.
  """
  n = len(x)
  if len(y) != n:
    raise ValueError(f"y must have length N={n} like x, got {len(y)}")
  stop = n if stop is None else int(stop)
  if not 0 <= start < stop <= n:
    raise ValueError(f"need 0 <= start < stop <= N={n}, got start={start}, stop={stop}")
  rows_up = -(-(stop - start) // multiple_of) * multiple_of
  batch_size = max(1, min(int(batch_size), rows_up))
  rows = []
  for lo in range(start, stop, batch_size):
    hi = min(lo + batch_size, stop)
    xb, yb = x[lo:hi], np.asarray(y[lo:hi])
    pad = batch_size - len(xb)
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
    rows.append(np.asarray(loss_fn(put(xb), put(yb)))[:batch_size - pad])
    if report is not None:
      report(hi - start)
  return np.concatenate(rows).astype(np.float32)


# ---------------------------------------------------------------------------------------
# One multi-head model: shared trunk, one head per expert.


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


def multihead_expert_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-head cross-entropy ``[B, C, K], int[B] → [B, C]`` (same interface as the others)."""
  checks.check_shape("logits", logits, (None, None, None), "[B, C, K]")
  b = np.shape(logits)[0]
  checks.check_shape("labels", labels, (b,), f"[B={b}]")
  return cross_entropy(logits, labels[:, None])


def multihead_loss(logits: jax.Array, labels: jax.Array, gamma, group_of=None,
                   normalisation: str = "mean",
                   axis_name: Optional[str] = None) -> jax.Array:
  """Training loss of a :class:`MultiHead`: mean over heads of head c's eq. 8 loss.

  Head ``c`` gets ``mean_i (1 + γ · 1[y_i = c]) · ℓ_{i,c}`` (``"weight_sum"``:
  ``Σ_i w_ic ℓ_ic / Σ_i w_ic``, :func:`weighted_average`); each head's gradient reaches
  only its own weights and the shared trunk.

  Args:
    logits: ``[B, C, K]``; labels: ``int[B]``; gamma: γ ≥ 0.
    group_of: ``None``, or int [K] class → group: head ``g`` (C = G heads) up-weights the
      classes of group g.
    normalisation: ``"mean"`` | ``"weight_sum"``.
    axis_name: data parallel (``"weight_sum"`` only): each head's Σ_i w_ic is ``pmean``-ed
      over the devices, so the ``pmean`` of the devices' losses is the whole batch's
      Σwℓ / Σw, as on one device.

  Returns:
    scalar.
  """
  losses = multihead_expert_losses(logits, labels)                  # [B, C]
  weights = class_weight_matrix(groups_lib.group_labels(labels, group_of), losses.shape[1],
                                gamma)                              # [B, C]
  if normalisation == "mean":      # one mean over [B, C] (= mean over heads of head means)
    return jnp.mean(weights * losses)
  if axis_name is None:
    return jnp.mean(weighted_average(losses, weights, normalisation, axis=0))
  w_sum = jax.lax.pmean(jnp.sum(weights, axis=0), axis_name)        # [C]
  return jnp.mean(jnp.sum(weights * losses, axis=0) / w_sum)


def multihead_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, params: Any,
                         opt_state: Any, x: jax.Array, y: jax.Array, gamma, *,
                         model_state: Any = None,
                         train_apply_fn: Optional[TrainApplyFn] = None,
                         rng: Optional[jax.Array] = None,
                         axis_name: Optional[str] = None, group_of=None,
                         normalisation: str = "mean"):
  """One optimizer step of a :class:`MultiHead` on :func:`multihead_loss` (``group_of``
  and ``normalisation`` as there).

  ``apply_fn(params, x) -> [B, C, K]``. Returns ``(params, opt_state, loss)``; with
  ``train_apply_fn`` (``(params, model_state, x, rng) -> (logits, new_model_state)``,
  models with batch norm or dropout) returns ``(params, opt_state, loss, model_state)``.
  ``axis_name``: data parallel as in :func:`train_step` (gradients ``pmean``-ed).
  """
  checks.check_in_range("gamma", gamma, 0.0)

  def loss_fn(p):
    if train_apply_fn is None:
      return (multihead_loss(apply_fn(p, x), y, gamma, group_of, normalisation, axis_name),
              model_state)
    logits, new_model_state = train_apply_fn(p, model_state, x, rng)
    return (multihead_loss(logits, y, gamma, group_of, normalisation, axis_name),
            new_model_state)

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if axis_name is not None:
    grads, loss = jax.lax.pmean((grads, loss), axis_name)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  if train_apply_fn is None:
    return params, opt_state, loss
  return params, opt_state, loss, new_model_state


def update_on_selected(apply_fn: ApplyFn, tx: optax.GradientTransformation,
                       state: ExpertsState, x: jax.Array, y: jax.Array, gamma, *,
                       train_apply_fn: Optional[TrainApplyFn] = None,
                       rng: Optional[jax.Array] = None, axis_name: Optional[str] = None,
                       stacked: bool = True, group_of=None,
                       normalisation: str = "mean") -> ExpertsState:
  """One step of the reference models on the points just selected (online update).

  The official REDUCR code's ``update_irreducible``: the amortised experts keep learning
  from the target model's selected points, with a small learning rate in ``tx`` (official
  lr/100 of the target's optimizer) and ``gamma = 0`` (the official unweighted mean
  cross-entropy; :func:`reducr_jax.train_experts.online_update`). Stacked experts (``stacked=True``, leading axis C, each with its eq.-8 γ
  weighting; one expert with γ = 0 is RHO-LOSS's irreducible-loss model) take
  :func:`train_step`; a :class:`MultiHead` model (``stacked=False``) takes
  :func:`multihead_train_step`.

  Args:
    apply_fn, tx, gamma, train_apply_fn, rng, normalisation: as :func:`train_step`.
    state: :class:`ExpertsState` (``model_state`` ``{}``/``None`` for stateless models).
    x: ``[k, ...]`` selected inputs (this device's share under ``pmap``); y: ``int[k]``.
    axis_name: average gradients over this ``pmap`` axis.

  Returns:
    the updated :class:`ExpertsState`.
  """
  if stacked:
    return train_step(apply_fn, tx, state, x, y, gamma, train_apply_fn=train_apply_fn,
                      rng=rng, axis_name=axis_name, group_of=group_of,
                      normalisation=normalisation)[0]
  out = multihead_train_step(apply_fn, tx, state.params, state.opt_state, x, y, gamma,
                             model_state=state.model_state, train_apply_fn=train_apply_fn,
                             rng=rng, axis_name=axis_name, group_of=group_of,
                             normalisation=normalisation)
  model_state = out[3] if train_apply_fn is not None else state.model_state
  return ExpertsState(out[0], out[1], model_state)
