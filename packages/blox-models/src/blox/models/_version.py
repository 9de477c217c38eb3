"""The version of blox-models, in one place (hatchling reads it to build)."""

__version__ = "0.1.0"
