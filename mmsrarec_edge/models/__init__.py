"""Models in PyTorch: SASRec and the LLaVA-style multimodal LLM."""
