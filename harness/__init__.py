"""segvae-bench: train, export to ONNX, benchmark and report."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segvae-bench")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"
