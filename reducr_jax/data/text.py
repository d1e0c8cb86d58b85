"""BERT tokenization for sentence(-pair) classification: WordPiece via ``tokenizers``.

* :func:`load_tokenizer` reads a local ``tokenizer.json`` or a BERT ``vocab.txt`` (or a
  directory holding either, e.g. a ``bert-base-uncased`` checkpoint directory); nothing
  is downloaded.
* :func:`encode_pairs` batch-encodes pairs into the ``int32 [N, 2, L]`` layout that
  :class:`reducr_jax.models.bert.BertClassifier` reads: row 0 token ids
  ``[CLS] a [SEP] b [SEP]``, row 1 token type (segment) ids.

The ``vocab.txt`` pipeline is BERT's (Devlin et al., 2019, https://arxiv.org/abs/1810.04805):
BERT normalizer (clean text, CJK spacing, optional lower-casing + accent stripping),
whitespace/punctuation pre-tokenizer, greedy longest-match-first WordPiece with ``##``
continuations and ``[UNK]`` for words longer than 100 characters or not coverable.

``tokenizers`` is imported lazily (``pip install "reducr_jax[text]"``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

PAD_ID = 0
"""Token id of ``[PAD]`` (bert-base-uncased) used for padding; the model masks it out."""

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
_HINT = ("pass config.dataset.tokenizer pointing at a local bert-base-uncased directory "
         "(vocab.txt from huggingface.co/bert-base-uncased)")


def _import_tokenizers():
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'BERT tokenization needs the tokenizers library: pip install "reducr_jax[text]"'
    ) from e
  return tokenizers


def _resolve(path: str) -> str:
  """Returns the tokenizer.json / vocab.txt file that ``path`` names or holds."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    for name in ("tokenizer.json", "vocab.txt"):
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f"no tokenizer.json or vocab.txt in directory {path!r}: {_HINT}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file {path!r} not found: {_HINT}")
  return path


def _read_vocab(path: str) -> dict[str, int]:
  """``vocab.txt``: one token a line, the id is the (0-based) line number."""
  vocab: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for index, line in enumerate(f):
      token = line.rstrip("\n").rstrip("\r")
      vocab.setdefault(token, index)
  return vocab


def _check_specials(tokenizer: Any, path: str) -> None:
  missing = [t for t in _SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
  if missing:
    raise ValueError(f"tokenizer {path!r} lacks the BERT special tokens {missing}")
  pad = tokenizer.token_to_id("[PAD]")
  if pad != PAD_ID:
    raise ValueError(f"tokenizer {path!r} has [PAD] id {pad}, expected PAD_ID={PAD_ID}")


def load_tokenizer(path: str, lowercase: bool = True) -> Any:
  """Loads a local BERT WordPiece tokenizer.

  Args:
    path: a ``tokenizer.json`` file, a ``vocab.txt`` file, or a directory holding either
      (``tokenizer.json`` is preferred when both are present).
    lowercase: for ``vocab.txt`` only: lower-case and strip accents (``True`` for
      ``*-uncased`` checkpoints). A ``tokenizer.json`` carries its own normalizer.

  Returns:
    A ``tokenizers.Tokenizer`` whose post-processor adds ``[CLS] A [SEP]`` /
    ``[CLS] A [SEP] B [SEP]`` with type ids 0 for A (and its [CLS]/[SEP]), 1 for B.

  Raises:
    FileNotFoundError: nothing usable at ``path``.
    ValueError: the vocabulary lacks ``[PAD]``/``[UNK]``/``[CLS]``/``[SEP]`` or ``[PAD]``
      is not id ``PAD_ID``.
  """
  tokenizers = _import_tokenizers()
  file = _resolve(path)
  if os.path.basename(file).endswith(".json"):
    tokenizer = tokenizers.Tokenizer.from_file(file)
    _check_specials(tokenizer, file)
    return tokenizer

  decoders, models = tokenizers.decoders, tokenizers.models
  normalizers, pre_tokenizers = tokenizers.normalizers, tokenizers.pre_tokenizers
  processors = tokenizers.processors
  vocab = _read_vocab(file)
  tokenizer = tokenizers.Tokenizer(
      models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
  _check_specials(tokenizer, file)
  tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None,
      lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  cls, sep = vocab["[CLS]"], vocab["[SEP]"]
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]",
      pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  tokenizer.decoder = decoders.WordPiece(prefix="##")
  return tokenizer


def encode_pairs(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None,
                 max_length: int) -> np.ndarray:
  """Batch-encodes sentences or sentence pairs to fixed-length BERT inputs.

  Args:
    tokenizer: from :func:`load_tokenizer` (a ``tokenizers.Tokenizer``). Its own
      truncation/padding settings are replaced for the call and restored afterwards.
    first: N sentences A.
    second: N sentences B, or ``None`` for single sentences (``[CLS] a [SEP]``).
    max_length: L, total length including special tokens. Pairs are truncated
      longest-first as in ``tokenizers``/``transformers`` fast tokenizers: with room
      R = L - 3, a shorter side of at most R // 2 tokens is kept whole and the other is
      cut to the rest; otherwise the shorter side keeps R // 2 tokens and the longer
      R - R // 2 (b counts as the longer on a tie).

  Returns:
    int32 ``[N, 2, L]``: ``[:, 0]`` token ids ``[CLS] a [SEP] b [SEP]`` padded with
    ``PAD_ID``; ``[:, 1]`` token type ids (0 on ``[CLS] a [SEP]``, 1 on ``b [SEP]``, 0 on
    padding).
  """
  first = list(first)
  n_special = 2 if second is None else 3
  if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) \
      or max_length < n_special:
    raise ValueError(f"max_length must be an int >= {n_special} "
                     f"(room for the special tokens), got {max_length!r}")
  if second is not None:
    second = list(second)
    if len(second) != len(first):
      raise ValueError(f"second must have len(first)={len(first)} sentences, "
                       f"got {len(second)}")
  for name, texts in (("first", first), ("second", second or [])):
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
      raise ValueError(f"{name} must hold str sentences, got {type(bad).__name__}")
  out = np.full((len(first), 2, int(max_length)), PAD_ID, np.int32)
  out[:, 1] = 0
  if not first:
    return out

  saved_truncation, saved_padding = tokenizer.truncation, tokenizer.padding
  try:
    tokenizer.enable_truncation(int(max_length), strategy="longest_first")
    tokenizer.no_padding()
    inputs = first if second is None else list(zip(first, second))
    encodings = tokenizer.encode_batch(inputs, add_special_tokens=True)
  finally:
    if saved_truncation is None:
      tokenizer.no_truncation()
    else:
      tokenizer.enable_truncation(**saved_truncation)
    if saved_padding is None:
      tokenizer.no_padding()
    else:
      saved_padding = dict(saved_padding)
      length = saved_padding.pop("length", None)
      tokenizer.enable_padding(length=length, **saved_padding)
  for i, enc in enumerate(encodings):
    ids = enc.ids
    out[i, 0, :len(ids)] = ids
    out[i, 1, :len(ids)] = enc.type_ids
  return out
