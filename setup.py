"""Installs the `transformer` package and the `configs` it trains; the entry scripts stay thin."""

import setuptools

with open('requirements.txt') as f:
  REQUIREMENTS = [line.strip() for line in f if line.strip() and not line.startswith('#')]

setuptools.setup(
    name='transformer',
    version='0.1.0',
    description='A French->English Transformer for studying normalization and regularization.',
    packages=setuptools.find_packages(include=['transformer', 'transformer.*', 'configs']),
    package_data={'transformer.datasets': ['data/*.xz']},
    python_requires='>=3.10',
    install_requires=REQUIREMENTS,
    extras_require={
        # GPU machines: CUDA wheels of the same jaxlib (CUDA 12 or 13 drivers). A CPU install
        # never pulls these.
        'cuda12': ['jax[cuda12]==0.10.2'],
        'cuda13': ['jax[cuda13]==0.10.2'],
        # `tensorboard --logdir WORKDIR/tensorboard` (the runs write with tensorboardX).
        'tensorboard': ['tensorboard==2.21.0'],
        # Benchmarks only: the PyTorch twin of the model (CPU build).
        'bench': ['torch==2.13.0'],
    },
)
