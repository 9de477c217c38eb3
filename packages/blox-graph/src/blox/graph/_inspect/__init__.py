"""Inspection: looking at a model without reading its code (internal; the API is `blox.graph`'s).

- `_calls`: watching module calls while a function is traced (the `recorded`
  wrappers the module metaclass puts on methods, `CALLS`, tabulate's
  `Recorder`, and `Module.sow`'s hand-over).
- `_capture`: `capture`, a function's outputs with its modules' intermediate
  values, and the hooks a layer stack's scan calls (`collecting`,
  `emit_stacked`).
- `_summary`, `_summary_rows`: `summary`, the params grouped by module.
- `_tabulate`, `_tabulate_rows`: `tabulate`, the module calls of a function.
- `_table`: the one renderer both tables use (column fitting, clipping,
  wrapping, numbers); `_display`: `Table`, the text that Jupyter shows as HTML.

Nothing here knows a layer type: a layer stack is read from the `STACKED`
metadata of its params.
"""
