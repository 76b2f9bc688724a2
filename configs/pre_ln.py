"""Pre-LN: x + F(LN(x)), plus a final LN on each stack.

Xiong et al. 2020 (arXiv:2002.04745) show the pre-LN gradient is well behaved at
initialization, so it trains without a long warm-up; tests whether it matches post-LN BLEU.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.norm_position = 'pre'
  return config
