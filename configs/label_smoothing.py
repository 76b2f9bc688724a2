"""Label smoothing epsilon 0.1, as in the original Transformer.

Szegedy et al. 2016 (arXiv:1512.00567); Vaswani et al. 2017 report it hurts perplexity but
helps BLEU; tests that trade-off.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.label_smoothing = 0.1
  return config
