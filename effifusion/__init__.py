"""EffiFusion-GAN speech enhancement: data-to-model pipeline (DVC + MLflow)."""

__version__ = "0.1.0"
