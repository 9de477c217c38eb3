"""The version of blox-nn, in one place (hatchling reads it to build)."""

__version__ = "0.2.0"
