"""stethoedge.export: PyTorch checkpoint to verified ONNX (and later TFLite/TensorRT) bundle."""
