"""Experiment configs as plain data: `base.py` holds every field; each variant overrides a few.

Nothing here imports the `transformer` package: listing, loading and comparing variants is
`transformer.variants` (`python -m transformer.variants` prints each variant's differences).
"""
