"""Checkpoint -> ONNX bundle (fp32 / fp16 / int8) -> TensorRT engines."""
