"""The version of blox-nn."""

__version__ = "0.2.0"
