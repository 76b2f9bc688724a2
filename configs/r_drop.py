"""R-Drop: two dropout passes, penalize their symmetric KL with weight 5.

Liang et al. 2021 (arXiv:2106.14448) use alpha = 5 for IWSLT translation; tests this
consistency regularizer against plain dropout.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.r_drop_alpha = 5.0
  return config
