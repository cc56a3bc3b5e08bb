"""Shipping a run: ONNX and torch.export files, int8 and pruned versions, their footprint, and an HTTP server."""
