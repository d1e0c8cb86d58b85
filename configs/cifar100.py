"""REDUCR on CIFAR-100 (not in the paper; same protocol and settings as CIFAR-10).

Data (TFDS ``cifar100``, fine labels): 50k train cut in half by the seed into a 25k pool
and a 25k holdout (= validation), 10k test. 100 classes means 100 experts: the default
precomputes their N×100 loss table once; ``--config.experts.losses=multihead`` trains one
ResNet with 100 heads instead (much cheaper to train).

  python -m reducr_jax.main --config=configs/cifar100.py --workdir=/tmp/reducr_cifar100
"""

import os

from reducr_jax import configuration
from reducr_jax.data import real


def get_config():
  config = configuration.load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.dataset = real.default_config("cifar100")
  config.dataset.augment = "crop_flip"
  config.dataset.imbalance_class = -1
  config.dataset.imbalance_fraction = 1.0
  return config
