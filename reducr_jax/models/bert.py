"""BERT encoder + sequence-classification head in Flax (bert-base-uncased layout).

:class:`BertClassifier` is BERT (Devlin et al., 2019, https://arxiv.org/abs/1810.04805)
as Hugging Face's ``BertForSequenceClassification`` computes it: word + position +
token-type embeddings, LayerNorm, dropout; ``num_layers`` post-LN Transformer layers
(self-attention → dense → dropout → residual → LayerNorm; dense → exact (erf) GELU →
dense → dropout → residual → LayerNorm); pooler ``tanh(dense(h[CLS]))``; dropout; linear
classifier. :mod:`reducr_jax.models.bert_import` maps Hugging Face weights onto it.

Parameter tree (``params``)::

  embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding
  embeddings/layer_norm/{scale, bias}
  layer_{i}/attention/{query, key, value, output}/{kernel, bias}
  layer_{i}/attention_layer_norm/{scale, bias}
  layer_{i}/{intermediate, output}/{kernel, bias}
  layer_{i}/output_layer_norm/{scale, bias}
  pooler/{kernel, bias}
  classifier/{kernel, bias}          (only when num_outputs is not None)

Kernels are ``[in, out]`` (Hugging Face ``nn.Linear`` weights transposed).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_INIT = nn.initializers.normal(stddev=0.02)  # BERT's N(0, 0.02²) weight init.
_MASK_BIAS = -1e9  # Added (in float32) to attention scores of padding keys.


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout.

  Attributes: see :class:`BertClassifier`.
  """
  vocab_size: int
  hidden_size: int
  max_position: int
  type_vocab_size: int
  dropout_rate: float
  layer_norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, type_ids: jax.Array, train: bool) -> jax.Array:
    """``ids``, ``type_ids``: int32 [B, L] → ``[B, L, hidden]`` in ``dtype``."""
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype,
                                     embedding_init=_INIT, name=name)
    positions = jnp.arange(ids.shape[1])[None, :]
    h = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_position, "position_embeddings")(positions)
         + embed(self.type_vocab_size, "token_type_embeddings")(type_ids))
    h = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="layer_norm")(h)
    return nn.Dropout(self.dropout_rate)(h, deterministic=not train)


class BertSelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention with a key padding mask + output dense.

  Attributes:
    hidden_size: model width (query/key/value/output kernels are ``[hidden, hidden]``).
    num_heads: heads; ``hidden_size`` must be divisible by it.
    dropout_rate: dropout on the attention probabilities.
    dtype: compute dtype; scores, mask and softmax are float32.
  """
  hidden_size: int
  num_heads: int
  dropout_rate: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, mask_bias: jax.Array, train: bool) -> jax.Array:
    """``h``: [B, L, hidden]; ``mask_bias``: float32 [B, 1, 1, L] (0 keep, -1e9 pad)."""
    b, l, _ = h.shape
    head_dim = self.hidden_size // self.num_heads
    dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype,
                                  kernel_init=_INIT, name=name)
    split = lambda t: t.reshape(b, l, self.num_heads, head_dim)
    q, k, v = (split(dense(name)(h)) for name in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    scores = scores / np.sqrt(head_dim).astype(np.float32) + mask_bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    return dense("output")(context.reshape(b, l, self.hidden_size))


class BertLayer(nn.Module):
  """One post-LN Transformer encoder layer (BERT).

  Attributes: see :class:`BertClassifier`.
  """
  hidden_size: int
  num_heads: int
  intermediate_size: int
  dropout_rate: float
  layer_norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, mask_bias: jax.Array, train: bool) -> jax.Array:
    """``h``: [B, L, hidden] → [B, L, hidden]."""
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                                     name=name)
    drop = lambda t: nn.Dropout(self.dropout_rate)(t, deterministic=not train)
    a = BertSelfAttention(self.hidden_size, self.num_heads, self.dropout_rate,
                          dtype=self.dtype, name="attention")(h, mask_bias, train)
    h = norm("attention_layer_norm")(h + drop(a))
    f = nn.Dense(self.intermediate_size, dtype=self.dtype, kernel_init=_INIT,
                 name="intermediate")(h)
    f = nn.gelu(f, approximate=False)
    f = nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=_INIT, name="output")(f)
    return norm("output_layer_norm")(h + drop(f))


class BertClassifier(nn.Module):
  """BERT sequence(-pair) classifier; defaults are bert-base-uncased.

  Attributes:
    num_outputs: classifier width; ``None`` returns the pooled ``[CLS]`` features
      ``[B, hidden_size]`` (dropout applied when training, as before HF's classifier),
      the trunk of :class:`reducr_jax.core.stacked_experts.MultiHead`.
    vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_position,
      type_vocab_size: BERT sizes (30522, 768, 12, 12, 3072, 512, 2 for bert-base).
    dropout_rate: hidden and attention-probability dropout (only with ``train=True``).
    layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).
    pad_id: token id that is masked out of attention (``[PAD]`` = 0).
    dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters stay
      float32, attention softmax and LayerNorm statistics are float32, and the output
      is float32.
  """
  num_outputs: Optional[int] = 3
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  pad_id: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dropout: Optional[bool] = None) -> jax.Array:
    """Classifies token-id sequences.

    x: int32 [B, 2, L]: x[:, 0] token ids, x[:, 1] token type ids; attention mask =
    ids != pad_id (pad at the end: appending more padding leaves the output unchanged).

    Returns float32 logits ``[B, num_outputs]`` (or pooled features ``[B, hidden]``).
    Dropout needs ``rngs={"dropout": key}`` when ``train=True``. ``dropout`` (default:
    ``train``) overrides it: BERT has no batch norm, so ``train`` acts only on dropout and
    ``dropout=True`` (MC dropout) is the training-mode forward.
    """
    if dropout is not None:
      train = dropout
    if x.ndim != 3 or x.shape[1] != 2:
      raise ValueError(f"x must be int [B, 2, L] (token ids, token type ids), "
                       f"got shape {tuple(x.shape)}")
    if x.shape[2] > self.max_position:
      raise ValueError(f"x length L must be <= max_position={self.max_position}, "
                       f"got {x.shape[2]}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} must be divisible by "
                       f"num_heads={self.num_heads}")
    ids, type_ids = x[:, 0].astype(jnp.int32), x[:, 1].astype(jnp.int32)
    mask_bias = jnp.where(ids != self.pad_id, 0.0, _MASK_BIAS).astype(jnp.float32)
    mask_bias = mask_bias[:, None, None, :]                        # [B, 1, 1, L]

    h = BertEmbeddings(self.vocab_size, self.hidden_size, self.max_position,
                       self.type_vocab_size, self.dropout_rate, self.layer_norm_eps,
                       dtype=self.dtype, name="embeddings")(ids, type_ids, train)
    for i in range(self.num_layers):
      h = BertLayer(self.hidden_size, self.num_heads, self.intermediate_size,
                    self.dropout_rate, self.layer_norm_eps, dtype=self.dtype,
                    name=f"layer_{i}")(h, mask_bias, train)
    pooled = nn.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=_INIT,
                              name="pooler")(h[:, 0]))
    pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=not train)
    if self.num_outputs is None:
      return pooled.astype(jnp.float32)
    logits = nn.Dense(self.num_outputs, dtype=self.dtype, kernel_init=_INIT,
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)
