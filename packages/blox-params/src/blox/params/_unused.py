"""`unused_params`: which params a call never reads.

The read recorder lives here and only here: `READS`, a `ContextVar` holding
a `ReadRecorder` (anything with `add(path)`: the set of paths read so far
for `unused_params`, `blox.graph.tabulate`'s recorder of module calls), or
None when nothing is recording. `Params.__getitem__` and
`Params.get_or_create` (on an existing path) add the path they read to it;
with no recorder active that costs one `ContextVar.get`.

Reads are recorded while `fn` is traced, so they are seen through `jax.jit`,
`lax.scan` and the like. JAX serves a jitted function (or a scan body) that
it traced before for the same inputs from its cache, without running its
Python code; its reads would go unseen. So `fn` is traced with
`jax.disable_jit()`: jitted functions run inline and scans trace step by
step (a long scan takes longer to inspect, but no read is missed).

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params, unused_params
  >>> params = Params({
  ...     ('layer0', 'w'): Param(jnp.ones((2, 2))),
  ...     ('layer1', 'w'): Param(jnp.ones((2, 2))),
  ... })
  >>> def one_layer(params, x):
  ...   return x @ params[('layer0', 'w')].value
  >>> unused_params(one_layer, params, jnp.ones(2))
  [('layer1', 'w')]
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import jax

from blox.params._paths import Path
from blox.params._split_arrays import split_arrays

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["READS", "ReadRecorder", "recording_reads", "unused_params"]


class ReadRecorder(Protocol):
  """What `READS` holds while recording: told each path read (a `set` is one)."""

  def add(self, path: Path, /) -> None: ...


READS: contextvars.ContextVar[ReadRecorder | None] = contextvars.ContextVar(
    "blox_params_reads", default=None
)


_Recorder = TypeVar("_Recorder", bound=ReadRecorder)


@contextlib.contextmanager
def recording_reads(recorder: _Recorder) -> Iterator[_Recorder]:
  """Tells `recorder.add(path)` of every param read while the block runs.

  The hook behind `unused_params` and `blox.graph.tabulate`, for tools that
  need to know which params a computation reads: indexing (`params[path]`)
  and `get_or_create` of an existing param count, reading the whole
  container (`items()`, `jax.tree.map`) does not. Recorders nest: the inner
  one sees the reads of its block, the outer one none of them.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params, recording_reads
    >>> params = Params({('w',): Param(jnp.ones(2)), ('b',): Param(jnp.ones(2))})
    >>> with recording_reads(set()) as reads:
    ...   _ = params[('b',)]
    >>> reads
    {('b',)}
  """
  token = READS.set(recorder)
  try:
    yield recorder
  finally:
    READS.reset(token)


def unused_params(
    fn: Callable[..., Any], params: Params, *args: Any, **kwargs: Any
) -> list[Path]:
  """The paths of `params` that `fn(params, *args, **kwargs)` never reads.

  The call runs abstractly (`jax.eval_shape`): nothing is computed or
  allocated, and `args` may be arrays or `jax.ShapeDtypeStruct`s. A param
  counts as read when `fn` indexes it (`params[path]`) or asks for it with
  `get_or_create`, also inside jitted functions (compiled before or not),
  scans and modules; reading the whole container (`items()`,
  `jax.tree.map`) reads no single param.

  Args:
    fn: the function to inspect, called as `fn(params, *args, **kwargs)`.
    params: the params to pass (concrete or abstract).
    *args: further positional arguments of `fn`.
    **kwargs: keyword arguments of `fn`.

  Returns:
    The unread paths, in the order of `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params, unused_params
    >>> params = Params({('a',): Param(jnp.ones(2)), ('b',): Param(jnp.ones(2))})
    >>> unused_params(lambda p: p[('b',)].value * 2, params)
    [('a',)]
  """
  # Arrays among the arguments are traced like the params (so that nothing
  # is computed on them); anything else (sizes, flags, modules) stays static.
  arrays, rebuild = split_arrays(args, kwargs)

  def call(params: Params, traced: list[Any]) -> None:
    call_args, call_kwargs = rebuild(traced)
    fn(params, *call_args, **call_kwargs)  # only its reads matter

  reads: set[Path] = set()
  # disable_jit: compiled functions would skip their Python code, and with
  # it the reads (see the module docstring).
  with recording_reads(reads), jax.disable_jit():
    jax.eval_shape(call, params, arrays)
  return [path for path in params if path not in reads]
