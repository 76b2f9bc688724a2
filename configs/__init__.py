"""Experiment configs: `base.py` holds every field; each variant overrides a few."""
