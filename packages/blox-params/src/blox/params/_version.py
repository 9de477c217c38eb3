"""The version of blox-params."""
__version__ = "0.2.0"
