"""Tests for reducr_jax.data.text: BERT WordPiece loading and pair encoding."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from reducr_jax.data import text  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
         "##s", ".", ",", "hello", "world", "un", "##bel", "##iev", "##able", "!", "a",
         "dog", "##gy", "café", "中"]
ID = {t: i for i, t in enumerate(VOCAB)}

PAIRS = [
    ("The cats sat", "on the mat."),
    ("Hello, WORLD!", "unbelievable doggy"),
    ("Héllo café", "a 中文 dog"),
    ("zzz the", "the cat sat on the mat , the cat sat on the mat"),
    ("the cat sat on the mat the cat sat on the mat", "hello"),
    ("", "cats"),
]


@pytest.fixture()
def vocab_dir(tmp_path):
  (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return tmp_path


def test_pair_ids_type_ids_and_padding(vocab_dir):
  tok = text.load_tokenizer(str(vocab_dir / "vocab.txt"))
  out = text.encode_pairs(tok, ["The cats sat"], ["on the mat."], max_length=14)
  assert out.dtype == np.int32 and out.shape == (1, 2, 14)
  # [CLS] the cat ##s sat [SEP] on the mat . [SEP] [PAD] x3
  ids = [2, 5, 6, 10, 7, 3, 8, 5, 9, 11, 3, 0, 0, 0]
  types = [0] * 6 + [1] * 5 + [0] * 3
  np.testing.assert_array_equal(out[0, 0], ids)
  np.testing.assert_array_equal(out[0, 1], types)
  assert text.PAD_ID == 0


def test_wordpiece_unk_accents_and_single_sentences(vocab_dir):
  tok = text.load_tokenizer(str(vocab_dir))  # directory holding vocab.txt
  out = text.encode_pairs(tok, ["Hello, WORLD!", "Unbelievable xyz", "Héllo"], None, 8)
  np.testing.assert_array_equal(out[:, 0], [
      [2, ID["hello"], ID[","], ID["world"], ID["!"], 3, 0, 0],
      [2, ID["un"], ID["##bel"], ID["##iev"], ID["##able"], ID["[UNK]"], 3, 0],
      [2, ID["hello"], 3, 0, 0, 0, 0, 0],
  ])
  np.testing.assert_array_equal(out[:, 1], 0)
  # Cased loading keeps capitals and accents: "Hello" / "Héllo" are unknown words.
  cased = text.load_tokenizer(str(vocab_dir / "vocab.txt"), lowercase=False)
  out = text.encode_pairs(cased, ["Hello hello", "Héllo café"], None, 5)
  np.testing.assert_array_equal(out[:, 0], [[2, 1, ID["hello"], 3, 0],
                                            [2, 1, ID["café"], 3, 0]])


def test_longest_first_truncation(vocab_dir):
  tok = text.load_tokenizer(str(vocab_dir / "vocab.txt"))
  # a = the cat ##s sat (4), b = on the mat . (4); room 8 - 3 = 5 -> a keeps 2, b keeps 3.
  out = text.encode_pairs(tok, ["The cats sat"], ["on the mat."], max_length=8)
  np.testing.assert_array_equal(out[0, 0], [2, 5, 6, 3, 8, 5, 9, 3])
  np.testing.assert_array_equal(out[0, 1], [0, 0, 0, 0, 1, 1, 1, 1])
  # Short a (1 token) kept whole, long b cut to the remaining room.
  out = text.encode_pairs(tok, ["hello"], ["the cat sat on the mat"], max_length=7)
  np.testing.assert_array_equal(out[0, 0], [2, 13, 3, 5, 6, 7, 3])
  np.testing.assert_array_equal(out[0, 1], [0, 0, 0, 1, 1, 1, 1])
  # Single sentences are cut at the end, [SEP] kept.
  out = text.encode_pairs(tok, ["the cat sat on the mat"], None, max_length=4)
  np.testing.assert_array_equal(out[0, 0], [2, 5, 6, 3])


def test_encode_restores_tokenizer_settings(vocab_dir):
  tok = text.load_tokenizer(str(vocab_dir / "vocab.txt"))
  assert tok.truncation is None and tok.padding is None
  text.encode_pairs(tok, ["the cat"], ["sat"], 6)
  assert tok.truncation is None and tok.padding is None
  tok.enable_truncation(5)
  text.encode_pairs(tok, ["the cat"], ["sat"], 9)
  assert tok.truncation["max_length"] == 5 and tok.padding is None


def test_tokenizer_json_gives_same_ids(vocab_dir, tmp_path_factory):
  tok = text.load_tokenizer(str(vocab_dir / "vocab.txt"))
  json_dir = tmp_path_factory.mktemp("json")
  tok.save(str(json_dir / "tokenizer.json"))
  from_json = text.load_tokenizer(str(json_dir / "tokenizer.json"))
  from_json_dir = text.load_tokenizer(str(json_dir))
  first, second = zip(*PAIRS)
  want = text.encode_pairs(tok, first, second, 12)
  np.testing.assert_array_equal(text.encode_pairs(from_json, first, second, 12), want)
  np.testing.assert_array_equal(text.encode_pairs(from_json_dir, first, second, 12), want)


def test_matches_transformers_fast_tokenizer(vocab_dir):
  transformers = pytest.importorskip("transformers")
  tok = text.load_tokenizer(str(vocab_dir))
  # from_pretrained(dir) reads vocab.txt in transformers 4 and 5 (transformers 5 silently
  # ignores BertTokenizerFast(vocab_file=...) and builds a 5-token vocabulary).
  ref = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
  first, second = map(list, zip(*PAIRS))
  for max_length in (8, 12, 32):
    want = ref(first, second, truncation="longest_first", max_length=max_length,
               padding="max_length")
    got = text.encode_pairs(tok, first, second, max_length)
    np.testing.assert_array_equal(got[:, 0], want["input_ids"])
    np.testing.assert_array_equal(got[:, 1], want["token_type_ids"])
    np.testing.assert_array_equal(got[:, 0] != text.PAD_ID, want["attention_mask"])


def test_matches_pure_python_bert_tokenizer_untruncated(vocab_dir):
  """An independent (pure-Python) WordPiece: same ids wherever nothing is truncated."""
  pytest.importorskip("transformers")
  try:
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
  except ImportError:
    from transformers import BertTokenizer as Slow  # transformers 4: the slow one
  ref = Slow(vocab_file=str(vocab_dir / "vocab.txt"))
  tok = text.load_tokenizer(str(vocab_dir))
  first, second = map(list, zip(*PAIRS))
  got = text.encode_pairs(tok, first, second, 40)
  for i, (a, b) in enumerate(PAIRS):
    want = ref(a, b)["input_ids"]
    assert len(want) < 40
    np.testing.assert_array_equal(got[i, 0, :len(want)], want)
    np.testing.assert_array_equal(got[i, 0, len(want):], 0)


def test_bad_inputs(vocab_dir, tmp_path_factory):
  with pytest.raises(FileNotFoundError, match="config.dataset.tokenizer"):
    text.load_tokenizer(str(vocab_dir / "missing.txt"))
  empty = tmp_path_factory.mktemp("empty")
  with pytest.raises(FileNotFoundError, match="bert-base-uncased"):
    text.load_tokenizer(str(empty))
  (empty / "vocab.txt").write_text("[UNK]\n[CLS]\n[SEP]\n[PAD]\n", encoding="utf-8")
  with pytest.raises(ValueError, match="PAD_ID"):
    text.load_tokenizer(str(empty))
  tok = text.load_tokenizer(str(vocab_dir))
  with pytest.raises(ValueError, match="max_length"):
    text.encode_pairs(tok, ["a"], ["b"], 2)
  with pytest.raises(ValueError, match="second"):
    text.encode_pairs(tok, ["a", "b"], ["c"], 8)
  assert text.encode_pairs(tok, [], [], 8).shape == (0, 2, 8)
