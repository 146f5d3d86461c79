"""Inference with PyTorch around the torch-free runtime (effifusion/runtime/): ``load_enhancer`` for an
exported ``.onnx`` or a checkpoint ``.pt`` (backends.py), ONNX export (export.py, diffusion_export.py,
onnx_graph.py, fusion_fit.py), pretrained imports (pretrained.py) and the bench (bench.py).

``from effifusion.inference import Enhancer, load_enhancer, EnhanceOptions`` is the Python API
(imported on first use, so ``import effifusion.inference.export`` does not load it).
"""

__all__ = ["EnhanceOptions", "Enhancer", "load_enhancer"]


def __getattr__(name: str):
    if name == "load_enhancer":
        from effifusion.inference.backends import load_enhancer

        return load_enhancer
    if name == "Enhancer":
        from effifusion.runtime.enhancer import Enhancer

        return Enhancer
    if name == "EnhanceOptions":
        from effifusion.runtime.processing import EnhanceOptions

        return EnhanceOptions
    raise AttributeError(f"module 'effifusion.inference' has no attribute {name!r}")
