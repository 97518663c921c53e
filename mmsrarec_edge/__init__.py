"""mmsrarec-edge: train MMSRARec in PyTorch, export it to ONNX/TensorRT, serve it torch-free on edge devices."""

__version__ = "0.1.0"
