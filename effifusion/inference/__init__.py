"""Inference: the Enhancer (backends.py), its processing (processing.py), ONNX models and their card
(onnx_model.py), files and folders (files.py): all without torch; export.py (torch) writes the models.

``from effifusion.inference import Enhancer, load_enhancer, EnhanceOptions`` is the Python API
(imported on first use, so ``import effifusion.inference.export`` does not load it).
"""

__all__ = ["EnhanceOptions", "Enhancer", "load_enhancer"]


def __getattr__(name: str):
    if name in ("Enhancer", "load_enhancer"):
        from effifusion.inference import backends

        return getattr(backends, name)
    if name == "EnhanceOptions":
        from effifusion.inference.processing import EnhanceOptions

        return EnhanceOptions
    raise AttributeError(f"module 'effifusion.inference' has no attribute {name!r}")
