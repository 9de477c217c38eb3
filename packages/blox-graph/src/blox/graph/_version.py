"""The version of blox-graph, in one place (hatchling reads it to build)."""

__version__ = "0.2.0"
