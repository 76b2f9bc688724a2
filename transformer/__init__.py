"""A French->English Transformer for studying normalization and regularization."""
