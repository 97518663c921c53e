"""Serving the runtime on NVIDIA Triton: PyTriton server, Triton model repository, client and load benchmark."""
