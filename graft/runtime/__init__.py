"""The runtime: no TensorFlow, only numpy, Pillow and onnxruntime (LiteRT, server, Ray optional)."""

from graft.runtime.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
