"""Strong dropout: residual dropout 0.3 instead of 0.1, nothing else.

The fairseq IWSLT14 de-en recipe (transformer_iwslt_de_en, Ott et al. 2019, arXiv:1904.01038)
uses 0.3 for this data size, and Sennrich & Zhang (2019) find more dropout pays off on small
corpora. Only the residual rate changes (that recipe also adds attention and activation
dropout), so that a difference to the baseline has one cause.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` (one of base.SCALES)."""
  config = base.get_config(scale)
  config.model.dropout_rate = 0.3
  return config
