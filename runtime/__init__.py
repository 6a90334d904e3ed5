"""Torch-free inference: bundles and engines -> embeddings, scores and search.

Nothing here imports torch or transformers: a Jetson has TensorRT, numpy,
Pillow and tokenizers, and that must be enough.
"""
