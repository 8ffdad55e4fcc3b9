"""Interoperability: official TensorFlow checkpoints in, ONNX out."""
