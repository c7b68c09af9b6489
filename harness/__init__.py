"""segvae-bench: train, export to ONNX, benchmark and report."""
__version__ = "0.1.0"
