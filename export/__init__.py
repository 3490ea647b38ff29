"""Export to ONNX, INT8 quantization, verification and serving (see issue "Export")."""
