"""blox.graph: static naming graphs, modules, and sequence scans.

Example:
  >>> from blox.graph import Graph
  >>> Graph('net').child('mlp').path
  ('net', 'mlp')
"""

from blox.graph._graph import Graph as Graph
from blox.graph._module import Module as Module
from blox.graph._repeat import Repeat as Repeat
from blox.graph._policy import Policy as Policy
from blox.graph._scan import Step as Step
from blox.graph._scan import dynamic_scan as dynamic_scan
from blox.graph._scan import static_scan as static_scan
from blox.graph._scan import time_length as time_length
from blox.graph._sequence import RecurrenceBase as RecurrenceBase
from blox.graph._sequence import SequenceBase as SequenceBase
from blox.graph._sequence import maybe_reset_state as maybe_reset_state
from blox.graph._sequence import with_reset as with_reset
from blox.graph._settings import setting as setting
from blox.graph._inspect._capture import capture as capture
from blox.graph._inspect._display import Table as Table
from blox.graph._inspect._summary import summary as summary
from blox.graph._inspect._tabulate import tabulate as tabulate
from blox.graph._version import __version__ as __version__

__all__ = [
    "Graph",
    "Module",
    "Policy",
    "RecurrenceBase",
    "Repeat",
    "SequenceBase",
    "Step",
    "Table",
    "__version__",
    "capture",
    "dynamic_scan",
    "maybe_reset_state",
    "setting",
    "static_scan",
    "summary",
    "tabulate",
    "time_length",
    "with_reset",
]
