"""Score-based diffusion for speech enhancement, torch-free: the OUVE SDE, the complex STFT front end
and the predictor-corrector sampler. numpy only, so the ONNX runtime runs the sampler without PyTorch;
the training task (training/tasks/score_matching.py) evaluates the same closed forms on tensors."""
