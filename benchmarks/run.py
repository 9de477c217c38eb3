"""Runs every blox benchmark and prints one table of ratios against plain JAX.

Usage, from the repository root:

  uv run benchmarks/run.py           # the sizes recorded in BENCHMARKS.md (about five minutes)
  uv run benchmarks/run.py --smoke   # tiny sizes, under a minute (CI)

All rows come from this one run, so the ratios are comparable with each
other; the sharded rows are measured in a child process that sees 8 simulated
devices (benchmarks/sharded.py), and each checkpoint load of the blox.models
rows in a fresh process (benchmarks/models.py). A ratio is blox time /
hand-written JAX time (or the baseline a row's note names): 1.00x means no
overhead. A row whose baseline is not installed (the generation rows against
`transformers`) shows no ratio, and its note says what to install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, Python puts benchmarks/ itself on the path; the benchmark
# modules import each other as `benchmarks.<name>` from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from benchmarks import (  # noqa: E402
    container, generation, lstm, models, sharded, train_step, transformer,
)
from benchmarks.timing import Row, format_seconds, format_table, machine  # noqa: E402


def _number(value: object) -> float:
  if not isinstance(value, (int, float)):
    raise TypeError(f"Expected a number in the container benchmark's row, got {value!r}.")
  return float(value)


def container_rows(smoke: bool) -> list[Row]:
  """The container benchmark's rows (Params vs a plain tuple) in this table's form."""
  rows = []
  for row in container.run(smoke):
    target = row.get("target")
    rows.append(
        Row(
            f"container {row['op']}, N={row['n']} (vs tuple)",
            format_seconds(_number(row["params_s"])),
            format_seconds(_number(row["tuple_s"])),
            _number(row["params_vs_tuple"]),
            "report" if target is None else f"<= {_number(target):.2f}x",
            f"vs dict: {_number(row['params_vs_dict']):.3f}x",
        )
    )
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  args = parser.parse_args(argv)

  rows: list[Row] = []
  for name, benchmark in (
      ("container", container_rows),
      ("train step", train_step.run),
      ("lstm", lstm.run),
      ("transformer", transformer.run),
      ("sharded", sharded.run),
      ("models", models.run),
      ("generation", generation.run),
  ):
    print(f"running: {name} ...", file=sys.stderr, flush=True)
    rows.extend(benchmark(args.smoke))
  print(f"machine: {machine()}")
  print(f"mode: {'smoke (tiny sizes, numbers mean nothing)' if args.smoke else 'full'}")
  print()
  print(format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
