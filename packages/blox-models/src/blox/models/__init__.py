"""blox.models: pretrained model families, Hugging Face checkpoints in and out."""

from blox.models._version import __version__ as __version__

__all__ = ["__version__"]
