"""The post-LN baseline, unchanged: the reference every other variant is compared with.

Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762).
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  return config
