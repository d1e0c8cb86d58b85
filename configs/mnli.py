"""REDUCR on MNLI (paper Table 1: worst-class test accuracy 79.45 %), bert-base-uncased.

Data (paper App. A.5, after Sagawa et al. 2020): the GLUE release's ``MNLI/train.tsv``,
``dev_matched.tsv``, ``dev_mismatched.tsv`` in ``config.dataset.manual_dir`` (the ``MNLI``
folder or its parent), or else TFDS ``glue/mnli`` (``config.dataset.glue_source``: 'auto'
takes the TSV files when they are there; 'tsv' / 'tfds' force one). The labelled train,
validation_matched and validation_mismatched pairs (412k) are split by the seed into train
(206k), holdout = validation (164k) and test (41k). Text is tokenised with the local
``bert-base-uncased`` tokenizer (``config.dataset.tokenizer``: a directory with
``vocab.txt`` or ``tokenizer.json``) to 128 tokens.

Weights: a local Hugging Face BERT directory (``config.json``, ``model.safetensors``,
``vocab.txt``; e.g. huggingface.co/bert-base-uncased), used for both the tokenizer and the
encoder; the model's sizes come from its ``config.json``.

  python -m reducr_jax.main --config=configs/mnli.py --workdir=/tmp/reducr_mnli \\
      --config.dataset.manual_dir=/data/glue_data \\
      --config.model.pretrained=/data/bert-base-uncased \\
      --config.dataset.tokenizer=/data/bert-base-uncased
"""

import os

import ml_collections
from ml_collections import config_dict

from reducr_jax import configuration
from reducr_jax.data import real
from reducr_jax.models import pretrained

BERT_DIR = os.path.expanduser("~/bert-base-uncased")


def get_config(dataset: str = "mnli"):
  config = configuration.load_config(os.path.join(os.path.dirname(__file__), "default.py"))
  config.dataset = real.default_config(dataset, tokenizer=BERT_DIR)
  config.dataset.max_length = 128                  # tokens per pair (ours; BERT max 512)
  config.dataset.augment = "none"
  config.model = ml_collections.ConfigDict()
  config.model.name = "bert"
  # Sizes: None = from config.model.pretrained's config.json (any BERT: small, large,
  # distilled into the BERT layout), bert-base-uncased's when there is none. A value set
  # here (or by --config.model.X) must agree with config.json.
  for field in pretrained.BERT_SIZES:            # vocab_size, hidden_size, num_layers, ...
    config.model[field] = config_dict.placeholder(int)
  config.model.dropout_rate = 0.1
  config.model.dtype = "float32"                   # 'bfloat16': mixed precision
  config.model.pretrained = BERT_DIR               # dir or model.safetensors (HF layout)
  config.model.pretrained_head = False             # fresh classifier
  config.optimizer.learning_rate = 1e-6            # paper: NLP
  config.optimizer.weight_decay = 0.01
  config.batch_size = 320                          # B
  config.selection.percent_selected = 0.1          # k = 32 (official NLP batch 32)
  config.selection.eta = configuration.eta_field(1e-4)
  config.num_steps = 200_000                       # ours: the paper's Fig. 6 runs to ~2·10^5 steps
  config.experts.gamma = 4.0                       # γ, text (paper)
  config.experts.learning_rate = 1e-6              # ours: as the target model
  config.experts.weight_decay = 0.01
  config.experts.batch_size = 32                   # ours
  config.experts.num_steps = 20_000                # ours
  config.experts.eval_every = 2_000
  config.eval_every = 2_000
  config.eval_batch_size = 512
  config.log_every = 200
  config.checkpoint_every = 2_000
  return config
