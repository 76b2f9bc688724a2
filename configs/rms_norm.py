"""RMSNorm in place of LayerNorm: no re-centring, no bias.

Zhang & Sennrich 2019 (arXiv:1910.07467) report LayerNorm quality at lower cost; tests
whether re-centring matters for translation.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.norm = 'rms_norm'
  return config
