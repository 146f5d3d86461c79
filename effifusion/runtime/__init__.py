"""The torch-free runtime: what an installed ``effifusion`` needs to enhance with an exported model.

enhancer.py (the Enhancer on ONNX Runtime), processing.py (rates, channels, pieces, attenuation limit),
files.py (files and folders), onnx_model.py (sessions and the model card), diffusion_runtime.py (the
sampler around a diffusion model's networks). Nothing here imports torch (tests/test_layers.py checks
it): numpy, soundfile and onnxruntime are enough.
"""
