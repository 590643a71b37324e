"""One hierarchy for every error jpq-env raises on purpose, so that callers catch one base.

Every error that says "this input is wrong" derives from ``JPQError``; the command line catches
that base (and ``OSError`` for files) and prints the message without a traceback, so anything
else that escapes is a bug and shows its traceback. Each class also derives from the built-in
exception it replaced (``ValueError`` or ``RuntimeError``), so ``except ValueError`` written
against earlier versions still catches it.

- ``ArgumentError``: an argument's value is not allowed (``jpq_env.validation`` raises it).
- ``GraphError``: the model cannot be compressed correctly (tracing, shared or tied weights,
  a module called twice, non-finite parameters).
- ``PolicyError``: a policy is malformed or does not fit its model.
- ``TaskError``: a task cannot be built (bad factory, missing path, bad data).
- ``ExportFormatError``: a file is not a jpq-env export, is damaged or does not fit its model
  (``OnnxFormatError`` for ONNX files).
- ``SearchError``: a search cannot start or continue (raised by the agents' package).

``UncompressedLayersWarning`` is the one warning category: layers jpq-env does not compress.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ExportFormatError",
    "GraphError",
    "JPQError",
    "OnnxFormatError",
    "PolicyError",
    "SearchError",
    "TaskError",
    "UncompressedLayersWarning",
]


class JPQError(Exception):
    """Base class of every error jpq-env raises about its input."""


class ArgumentError(JPQError, ValueError):
    """An argument's value is not allowed; the message names the argument and what is."""


class GraphError(JPQError, ValueError):
    """The model cannot be turned into a layer graph (untraceable, nothing to compress, ...)."""


class PolicyError(JPQError, ValueError):
    """A policy is malformed or does not fit the model it is applied to."""


class TaskError(JPQError, ValueError):
    """A task cannot be built or is inconsistent (bad factory, missing path, bad data)."""


class ExportFormatError(JPQError, ValueError):
    """A file is not a jpq-env export, is damaged, or does not fit the model it is loaded into."""


class OnnxFormatError(ExportFormatError):
    """An ONNX file that cannot be read or run (its message names the file)."""


class SearchError(JPQError, RuntimeError):
    """A search cannot start or continue (another run in the directory, diverged resume, ...)."""


class UncompressedLayersWarning(UserWarning):
    """The model has layers jpq-env does not compress; the cost model counts them at FP32."""
