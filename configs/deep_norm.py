"""DeepNorm: post-LN with LN(alpha * x + F(x)) and beta-scaled init.

Wang et al. 2022, "DeepNet" (arXiv:2203.00555): bounds the model update so post-LN trains
stably; tests whether it helps at 6+6 layers, where the paper says the gain is small.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.residual = 'deep_norm'
  return config
