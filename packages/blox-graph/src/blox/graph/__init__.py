"""blox.graph: static naming graphs, modules, and sequence scans.

Example:
  >>> from blox.graph import Graph
  >>> Graph('net').child('mlp').path
  ('net', 'mlp')
"""

from blox.graph.graph import Graph
from blox.graph.module import Module

__all__ = [
    "Graph",
    "Module",
]
