"""Evaluation: fine-grained (MMVP-style) and global benchmarks, synthetic and real.

The metrics and loaders here are plain numpy; `python -m agff_deploy.eval`
runs them through the runtime's Python API, so a checkpoint, an ONNX bundle
at any precision and a TensorRT engine are measured the same way.
"""
