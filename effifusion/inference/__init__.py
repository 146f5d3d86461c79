"""Inference: the Enhancer (backends.py), its processing (processing.py), ONNX models and their card
(onnx_model.py), files and folders (files.py): all without torch; export.py (torch) writes the models."""
