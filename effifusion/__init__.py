"""EffiFusion-GAN speech enhancement: data-to-model pipeline (DVC + MLflow) and a torch-free enhancer.

``from effifusion import Enhancer`` (ONNX Runtime; ``pip install effifusion``)::

    enhancer = Enhancer.from_file("effifusion.onnx")
    enhanced = enhancer.enhance(wav, sample_rate)   # [N] or [N, C] at any rate -> same shape

The pipeline (training, export, evaluation) needs ``pip install effifusion[pipeline]``.
"""

__version__ = "0.1.0"

__all__ = ["EnhanceOptions", "Enhancer", "load_enhancer", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import effifusion` (every stage does) loads neither ONNX Runtime nor soundfile.
    if name in ("Enhancer", "load_enhancer"):
        from effifusion.inference import backends

        return getattr(backends, name)
    if name == "EnhanceOptions":
        from effifusion.inference.processing import EnhanceOptions

        return EnhanceOptions
    raise AttributeError(f"module 'effifusion' has no attribute {name!r}")
