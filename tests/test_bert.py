"""Tests for reducr_jax.models.bert and bert_import: shapes, masking, dropout, HF parity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.models import bert_import
from reducr_jax.models.bert import BertClassifier

TINY = dict(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
            max_position=32)
B, L = 4, 12   # One input shape for most tests: each jitted function compiles once.
MODEL = BertClassifier(num_outputs=3, **TINY)
APPLY = jax.jit(MODEL.apply, static_argnames="train")


def _inputs(lengths, max_length=L, seed=0, pair_at=None):
  """int32 [B, 2, L]: random non-pad ids for the first lengths[i] positions, then pads."""
  rng = np.random.default_rng(seed)
  x = np.zeros((len(lengths), 2, max_length), np.int32)
  for i, n in enumerate(lengths):
    x[i, 0, :n] = rng.integers(1, TINY["vocab_size"], n)
    split = pair_at[i] if pair_at else n // 2
    x[i, 1, split:n] = 1
  return x


def _random_variables(model, seed=0):
  """O(1)-logit float32 variables (BERT's own N(0, 0.02²) init gives ~1e-3 logits).

  Kernels/embeddings N(0, 0.3²), biases N(0, 0.1²), LayerNorm scales 1 + N(0, 0.1²);
  built in NumPy from the abstract init (no compile).
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 4), jnp.int32))

  def draw(path, s):
    leaf = path[-1].key
    noise = rng.normal(size=s.shape).astype(np.float32)
    return {"scale": 1 + 0.1 * noise, "bias": 0.1 * noise}.get(leaf, 0.3 * noise)
  return jax.tree_util.tree_map_with_path(draw, shapes)


VARIABLES = _random_variables(MODEL)


def test_init_shapes_and_trunk_features():
  x = _inputs([5, 9, 3, 12])
  variables = jax.jit(MODEL.init)(jax.random.PRNGKey(0), x)
  params = variables["params"]
  assert set(params) == {"embeddings", "layer_0", "layer_1", "pooler", "classifier"}
  assert params["layer_0"]["attention"]["query"]["kernel"].shape == (16, 16)
  assert params["layer_1"]["intermediate"]["kernel"].shape == (16, 32)
  assert params["embeddings"]["position_embeddings"]["embedding"].shape == (32, 16)
  assert params["classifier"]["kernel"].shape == (16, 3)
  std = np.std(params["layer_0"]["output"]["kernel"])
  assert 0.01 < std < 0.03          # BERT's N(0, 0.02²) init.
  np.testing.assert_array_equal(params["layer_1"]["output_layer_norm"]["scale"], 1.0)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(VARIABLES)
  logits = APPLY(VARIABLES, x)
  assert logits.shape == (B, 3) and logits.dtype == jnp.float32
  # The trunk (num_outputs=None) returns the pooled features the classifier reads.
  trunk = BertClassifier(num_outputs=None, **TINY)
  trunk_params = {k: v for k, v in VARIABLES["params"].items() if k != "classifier"}
  features = jax.jit(trunk.apply)({"params": trunk_params}, x)
  assert features.shape == (B, 16)
  assert np.abs(features).max() <= 1.0                     # tanh pooler
  head = VARIABLES["params"]["classifier"]
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="x must be int"):
    MODEL.apply(VARIABLES, x[:, 0])
  with pytest.raises(ValueError, match="max_position"):
    MODEL.apply(VARIABLES, _inputs([5], 40))


def test_padding_invariance():
  short = _inputs([4, 10, 7, 12], seed=1)
  long = np.zeros((B, 2, 2 * L), np.int32)
  long[:, :, :L] = short
  a = APPLY(VARIABLES, short)
  assert np.abs(np.asarray(a)).max() > 0.3
  np.testing.assert_allclose(APPLY(VARIABLES, long), a, rtol=1e-5, atol=1e-5)
  # Padding is what is masked: a pad position's type id changes nothing; a real token
  # changes its own row only.
  other = short.copy()
  other[0, 1, 6:] = 1
  np.testing.assert_allclose(APPLY(VARIABLES, other), a, rtol=1e-5, atol=1e-5)
  other[1, 0, 3] = (other[1, 0, 3] % 63) + 1
  changed = np.abs(np.asarray(APPLY(VARIABLES, other) - a)).max(axis=1)
  assert changed[1] > 1e-2 and max(changed[0], changed[2], changed[3]) < 1e-5


def test_dropout_only_when_training():
  x = _inputs([6, 8, 12, 2])
  eval_logits = APPLY(VARIABLES, x)
  # "rbg" keys: the same dropout semantics, ~3x faster to compile on CPU than threefry.
  key = lambda seed: jax.random.key(seed, impl="rbg")
  train = lambda seed: APPLY(VARIABLES, x, train=True, rngs={"dropout": key(seed)})
  t1, t1_again, t2 = train(1), train(1), train(2)
  np.testing.assert_array_equal(t1, t1_again)
  assert np.abs(np.asarray(t1 - t2)).max() > 1e-2
  assert np.abs(np.asarray(t1 - eval_logits)).max() > 1e-2
  with pytest.raises(Exception, match="dropout"):
    MODEL.apply(VARIABLES, x, train=True)   # no rngs={"dropout": ...}
  no_dropout = BertClassifier(num_outputs=3, dropout_rate=0.0, **TINY)
  np.testing.assert_allclose(
      jax.jit(no_dropout.apply, static_argnames="train")(
          VARIABLES, x, train=True, rngs={"dropout": key(1)}),
      eval_logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute():
  x = _inputs([6, 11, 3, 12], seed=3)
  bf16 = BertClassifier(num_outputs=3, dtype=jnp.bfloat16, **TINY)
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
  want = APPLY(VARIABLES, x)
  logits_fn = lambda p: bf16.apply({"params": p}, x)
  got, grads = jax.jit(lambda p: (logits_fn(p), jax.grad(lambda q: logits_fn(q).sum())(p)))(
      VARIABLES["params"])
  assert got.dtype == jnp.float32
  assert np.abs(np.asarray(want)).max() > 0.3
  np.testing.assert_allclose(got, want, atol=0.1 * np.abs(np.asarray(want)).max())
  assert np.abs(np.asarray(got - want)).max() > 0   # it did compute in bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


def _hf_model(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.BertConfig(
      vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=32, type_vocab_size=2, num_labels=3,
      hidden_act="gelu", layer_norm_eps=1e-12)
  torch.manual_seed(0)
  model = transformers.BertForSequenceClassification(config).eval()
  # HF initialises with N(0, 0.02²) and LayerNorm (1, 0): randomise everything so the
  # logits are O(1) and every tensor (LayerNorm scales/biases included) matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.1 if "LayerNorm" in name else 0.3
      p.copy_((1.0 if name.endswith("LayerNorm.weight") else 0.0)
              + scale * torch.randn_like(p))
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  return torch, model


def test_equal_logits_to_hf_bert(tmp_path):
  torch, hf = _hf_model(tmp_path)
  tensors = bert_import.load_hf_checkpoint(str(tmp_path))       # the directory
  assert set(tensors) == set(bert_import.load_hf_checkpoint(
      str(tmp_path / "model.safetensors")))
  variables = bert_import.bert_variables_from_hf(tensors, include_head=True)
  x = _inputs([12, 5, 9, 1], seed=4, pair_at=[7, 2, 9, 1])
  with torch.no_grad():
    ids = torch.from_numpy(x[:, 0].astype(np.int64))
    want = hf(input_ids=ids, token_type_ids=torch.from_numpy(x[:, 1].astype(np.int64)),
              attention_mask=(ids != 0).long()).logits.numpy()
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(APPLY(variables, x), want, rtol=1e-5, atol=1e-5)

  # merge_pretrained into fresh variables, with and without the head.
  merged = bert_import.merge_pretrained(VARIABLES, variables, include_head=True)
  np.testing.assert_allclose(APPLY(merged, x), want, rtol=1e-5, atol=1e-5)
  fresh5 = jax.tree_util.tree_map(lambda p: p, VARIABLES)
  fresh5["params"]["classifier"] = {"kernel": np.ones((16, 5), np.float32),
                                    "bias": np.zeros(5, np.float32)}
  merged5 = bert_import.merge_pretrained(fresh5, variables, include_head=False)
  np.testing.assert_array_equal(merged5["params"]["classifier"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged5["params"]["pooler"]["kernel"],
                                variables["params"]["pooler"]["kernel"])
  with pytest.raises(ValueError, match="include_head=False"):
    bert_import.merge_pretrained(fresh5, variables, include_head=True)
  bigger = _random_variables(BertClassifier(num_outputs=3, **{**TINY, "num_layers": 3}))
  with pytest.raises(ValueError, match="lacks 16 .*layer_2"):
    bert_import.merge_pretrained(bigger, variables, include_head=True)


def test_import_key_variants(tmp_path):
  torch, hf = _hf_model(tmp_path)
  tensors = {k: v for k, v in hf.state_dict().items()}        # torch tensors
  reference = bert_import.bert_variables_from_hf(tensors, include_head=False)
  assert "classifier" not in reference["params"]
  # BertModel keys (no "bert." prefix), legacy gamma/beta names, buffers and an MLM head.
  legacy = {}
  for k, v in tensors.items():
    if k.startswith("classifier."):
      continue
    k = k[len("bert."):]
    if ".LayerNorm." in k:
      k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
    legacy[k] = v.numpy()
  legacy["embeddings.position_ids"] = np.arange(32)[None]
  legacy["cls.predictions.bias"] = np.zeros(64, np.float32)
  legacy["cls.predictions.transform.dense.weight"] = np.zeros((16, 16), np.float32)
  converted = bert_import.bert_variables_from_hf(legacy)
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted, reference)
  # Linear [out, in] → kernel [in, out].
  np.testing.assert_array_equal(
      converted["params"]["layer_1"]["intermediate"]["kernel"],
      tensors["bert.encoder.layer.1.intermediate.dense.weight"].numpy().T)

  with pytest.raises(ValueError, match="missing 2 key.*layer.1.output.dense"):
    bert_import.bert_variables_from_hf(
        {k: v for k, v in legacy.items() if "layer.1.output.dense" not in k})
  with pytest.raises(ValueError, match="missing 2 key.*classifier"):
    bert_import.bert_variables_from_hf(legacy, include_head=True)
  with pytest.raises(ValueError, match="not in a Hugging Face BERT.*rotary"):
    bert_import.bert_variables_from_hf({**legacy, "encoder.layer.0.rotary.weight": 0.0})
  with pytest.raises(ValueError, match="must be 2-D"):
    bert_import.bert_variables_from_hf(
        {**legacy, "pooler.dense.weight": np.zeros(16, np.float32)})
  with pytest.raises(FileNotFoundError, match="bert-base-uncased"):
    bert_import.load_hf_checkpoint(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    bert_import.load_hf_checkpoint(str(tmp_path / "empty"))


def test_sizes_from_config_json(tmp_path):
  """config.model size fields left None come from the checkpoint's config.json (else
  bert-base); an explicit one that contradicts it is one line naming both values."""
  import json
  import ml_collections
  from reducr_jax import models
  from reducr_jax.models import pretrained
  hf = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40,
        "type_vocab_size": 1, "model_type": "bert"}
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg = ml_collections.ConfigDict({"name": "bert", "pretrained": str(tmp_path),
                                   "dropout_rate": 0.1, "num_heads": 4, "dtype": "float32",
                                   "pretrained_head": False,
                                   **{f: None for f in pretrained.BERT_SIZES if f != "num_heads"}})
  got = pretrained.resolve_sizes(cfg)
  assert [got[f] for f in pretrained.BERT_SIZES] == [100, 32, 2, 4, 64, 40, 1]
  assert models.create_model(cfg, 3).type_vocab_size == 1
  cfg.hidden_size = 768
  with pytest.raises(ValueError) as e:
    models.validate_model_config(cfg)
  assert str(e.value).startswith("config.model.hidden_size=768 contradicts 32 in the "
                                 f"checkpoint {tmp_path / 'config.json'}") and "\n" not in str(e.value)
  cfg.pretrained = str(tmp_path / "elsewhere")              # no config.json: bert-base
  assert pretrained.resolve_sizes(cfg).num_layers == 12
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "distilbert", "dim": 768}))
  cfg.pretrained, cfg.hidden_size = str(tmp_path), None
  with pytest.raises(ValueError, match="not a BERT config.json .*'distilbert'"):
    models.validate_model_config(cfg)
