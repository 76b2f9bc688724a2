"""ReZero: no norm; x + g * F(x) with a scalar g per sublayer initialized to 0.

Bachlechner et al. 2020 (arXiv:2003.04887): each layer starts as the identity, so signal
propagation is trivial at init; tests whether normalization is needed at all.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.norm = 'none'
  config.model.residual = 'rezero'
  return config
