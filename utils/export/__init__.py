"""Exporting a checkpoint: its ONNX Runtime graphs (graphs.py), and each one measured against PyTorch (variants.py)."""
