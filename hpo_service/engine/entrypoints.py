"""User trial functions named in a spec (``execution.trial: "package.module:function"``).

Importing code named by a request is running that code, so a server allows it only for the names its own
configuration lists (``hpo serve --allow-trial PATTERN``, or ``HPO_ALLOWED_TRIALS``, comma-separated shell
patterns such as ``mylab.trials:*``). A trial function takes the payload (``config``, ``multipliers`` and
``device``, the torch device of the GPU Ray assigned the trial, or ``cpu``) and a ``report(step, metrics)``
callback and returns a ``trainer.TrialResult``-shaped dict.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable

ENTRYPOINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
TrialFn = Callable[[dict, Callable[[int, dict[str, float]], None]], dict]


class EntrypointError(ValueError):
    """The named trial function is not allowed here, or cannot be imported."""


def check_allowed(name: str, patterns: list[str]) -> None:
    """Refuse ``name`` unless it matches one of the server's ``patterns``; no patterns allow nothing."""
    if not patterns:
        raise EntrypointError(
            f"names Python code to import ({name!r}); this server imports none "
            "(start it with --allow-trial PATTERN or HPO_ALLOWED_TRIALS to allow some)"
        )
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
        raise EntrypointError(f"{name!r} is not among the trial functions this server allows ({', '.join(patterns)})")


def load_trial(name: str) -> TrialFn:
    """The function ``name`` ("package.module:function") refers to."""
    if not ENTRYPOINT.match(name):
        raise EntrypointError(f"{name!r} is not of the form 'package.module:function'")
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # importing runs the module's code, which may raise anything
        raise EntrypointError(f"cannot import {name!r}: {_reason(exc)}") from None
    if not callable(function):
        raise EntrypointError(f"{name!r} is not callable")
    return function


def _reason(exc: Exception) -> str:
    """Why an import failed, without the server's file paths (an ``ImportError`` names the file it looked in)."""
    if isinstance(exc, ImportError | AttributeError):
        path = getattr(exc, "path", None)
        return str(exc).replace(f" ({path})", "") if path else str(exc)
    return f"{type(exc).__name__}: {exc}"
