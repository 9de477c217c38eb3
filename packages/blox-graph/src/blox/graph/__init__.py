"""blox.graph: static naming graphs, modules, and sequence scans.

Example:
  >>> from blox.graph import Graph
  >>> Graph('net').child('mlp').path
  ('net', 'mlp')
"""

from blox.graph.graph import Graph
from blox.graph.module import Module
from blox.graph.scan import dynamic_scan, static_scan
from blox.graph.sequence import RecurrenceBase, SequenceBase, maybe_reset_state
from blox.graph.summary import summary

__all__ = [
    "Graph",
    "Module",
    "RecurrenceBase",
    "SequenceBase",
    "dynamic_scan",
    "maybe_reset_state",
    "static_scan",
    "summary",
]
