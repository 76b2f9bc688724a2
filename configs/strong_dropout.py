"""Strong dropout: residual 0.3, attention 0.1, activation 0.1.

The fairseq IWSLT14 de-en recipe (transformer_iwslt_de_en, Ott et al. 2019, arXiv:1904.01038)
uses 0.3 for this data size; tests whether heavier regularization pays off on IWSLT.
"""

import ml_collections

from configs import base


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns this variant at `scale` ('full' or 'small')."""
  config = base.get_config(scale)
  config.model.dropout_rate = 0.3
  config.model.attention_dropout_rate = 0.1
  config.model.activation_dropout_rate = 0.1
  return config
