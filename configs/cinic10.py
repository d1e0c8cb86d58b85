"""REDUCR on CINIC-10 (paper Table 1: worst-class test accuracy 75.30 %), ResNet-18.

Data: CINIC-10 (Darlow et al. 2018) is not in the TFDS catalog; :mod:`reducr_jax.data.cinic10`
is a TFDS builder that reads the official release from ``config.dataset.manual_dir``:
download ``CINIC-10.tar.gz`` from https://datashare.ed.ac.uk/handle/10283/3192, extract it
so that ``<manual_dir>/{train,valid,test}/<class>/*.png`` exist (90k 32×32 images per split);
the first run prepares the TFDS files (no network). Splits (paper App. A.5): train = train,
holdout = validation set = ``valid``, test = ``test``.

  python -m reducr_jax.main --config=configs/cinic10.py --workdir=/tmp/reducr_cinic10 \\
      --config.dataset.manual_dir=/data/CINIC-10
"""

import os

import ml_collections

from reducr_jax.config import config_files
from reducr_jax.data import real_specs


def get_config(variant: str = ""):
  """``variant``: '' (the paper: wd 0.1 and B = 320 for every method) or 'official' (the
  official yamls' per-method settings: ``configs/cinic10.py:official``)."""
  if variant not in ("", "official"):
    raise ValueError(f"configs/cinic10.py takes '' or 'official', got {variant!r}")
  config = config_files.load_config(os.path.join(os.path.dirname(__file__), "cifar10.py"))
  config.dataset = real_specs.config_for("cinic10", imbalance_mode="weighted_sampler",
                                       label_noise_mode="any")
  config.dataset.augment = "crop_flip"
  # CINIC-10's own channel statistics (Darlow et al. 2018; official CINIC10DataModule).
  config.model.mean = (0.47889522, 0.47227842, 0.43047404)
  config.model.std = (0.24205776, 0.23828046, 0.25874835)
  config.optimizer.weight_decay = 0.1              # paper: CINIC-10 only
  config.experts.weight_decay = 0.1
  config.num_steps = 28_100                        # ours: 100 epochs of the 90k pool at B = 320
  config.experts.num_steps = 28_100                # ours: 100 epochs of the 90k holdout
  config.experts.eval_every = 1_405
  config.eval_every = 1_405                        # ours: every 5 epochs
  config.log_every = 281
  config.checkpoint_every = 1_405
  if variant == "official":
    # cinic10_resnet18_main_uniform.yaml: B = 640 (k = 64) and no weight decay set, so
    # PyTorch's 0.01; cinic10_resnet18_{payoff,weighted}.yaml: 0.01 too. Same 150 epochs
    # as the other yamls, so uniform takes half the steps at twice the batch.
    config.method_overrides.uniform = ml_collections.ConfigDict({
        "batch_size": 640, "num_steps": 14_050, "optimizer": {"weight_decay": 0.01}})
    config.method_overrides.payoff = ml_collections.ConfigDict(
        {"optimizer": {"weight_decay": 0.01}})
    config.method_overrides.weighted.optimizer = ml_collections.ConfigDict(
        {"weight_decay": 0.01})
  return config
