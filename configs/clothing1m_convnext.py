"""Clothing1M with ConvNeXt-T instead of ResNet-18: the official REDUCR ConvNeXt runs
(``configs/experiment/clothing1m_{main_robust,main_rho,uniform,train_loss}_convnext.yaml``,
model ``configs/model/large_model/convnext.yaml``: Hugging Face
``ConvNextForImageClassification`` "facebook/convnext-tiny-224", 14 labels).

Everything else is ``configs/clothing1m.py`` (the official ConvNeXt yamls keep B = 320,
AdamW lr 1e-3, 50 epochs, η from the selection yaml and ``clean_val_mode: 'val'``).
Departures, not followed yet: the official model starts from the ImageNet-1k weights of
convnext-tiny-224; this project has no importer for them, so ``model.pretrained`` is ''
(from scratch; a one-line error otherwise). The official ConvNeXt expert yamls
(``clothing1m_irred_weights_convnext.yaml``) train 25 epochs at batch 64; the experts here
keep ``configs/clothing1m.py``'s settings.

  python -m reducr_jax.main --config=configs/clothing1m_convnext.py --workdir=/tmp/c1m_cnx \\
      --config.dataset.manual_dir=/data/clothing1m

Smoke run on fake shapes: ``--config.model.depths='(1, 1)' --config.model.dims='(8, 16)'``.
"""

import os

import ml_collections

from reducr_jax.config import config_files
from reducr_jax.models import convnext


def get_config():
  config = config_files.load_config(os.path.join(os.path.dirname(__file__), "clothing1m.py"))
  model = ml_collections.ConfigDict()
  model.name = "convnext"
  model.depths = convnext.TINY_DEPTHS              # ConvNeXt-T: (3, 3, 9, 3)
  model.dims = convnext.TINY_DIMS                  # (96, 192, 384, 768): 28.6M params
  model.mean = ()                                  # () = ImageNet statistics (HF processor)
  model.std = ()
  model.dtype = "float32"
  model.dropout_rate = 0.0                         # before the head; > 0 for MC-dropout rules
  model.pretrained = ""                            # official: ImageNet weights (no importer)
  model.pretrained_head = False
  config.model = model
  return config
