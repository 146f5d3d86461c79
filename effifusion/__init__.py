"""EffiFusion-GAN speech enhancement: data-to-model pipeline (DVC + MLflow) and a torch-free enhancer.

Enhancing (``pip install .`` in a clone, or its wheel: ONNX Runtime, no torch)::

    from effifusion.inference import Enhancer
    enhancer = Enhancer.from_file("pruned.onnx")
    enhanced = enhancer.enhance(wav, sample_rate)   # [N] or [N, C] at any rate -> same shape

The pipeline (training, export, evaluation) needs ``pip install ".[pipeline]"``. This file holds
no imports: every stage imports the package, and dvc.yaml's deps follow what it imports.
"""

__version__ = "0.1.0"
