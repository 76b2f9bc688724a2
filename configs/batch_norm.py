"""Masked BatchNorm in place of LayerNorm (statistics over real tokens of the batch).

Ioffe & Szegedy 2015 (arXiv:1502.03167); Shen et al. 2020 (arXiv:2003.07845) find BN
underperforms in NLP because batch statistics of text vary a lot. Tests that claim.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.norm = 'batch_norm'
  return config
