"""No residual dropout: how much the baseline relies on dropout.

Vaswani et al. 2017 (arXiv:1706.03762, Table 3 row D) lose BLEU without it; the small
IWSLT data should make the effect larger.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.dropout_rate = 0.0
  return config
