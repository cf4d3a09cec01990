"""slimtorch: make a trained PyTorch model smaller and faster, and prove it."""

from slimtorch.version import __version__

__all__ = ["__version__"]
