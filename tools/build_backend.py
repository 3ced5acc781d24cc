"""setuptools, with its scratch folders (``build/``, ``*.egg-info``) kept in a temporary folder, not the checkout.

pip builds in the source tree, where setuptools would leave ``build/`` and ``completedp_hpo.egg-info`` behind, and
a later wheel would ship whatever stale module ``build/lib`` still held. pyproject.toml names this module as the
build backend; each hook is setuptools' own, run with its ``build`` and ``egg_info`` folders under a fresh
temporary folder (through ``DIST_EXTRA_CONFIG``, an extra setuptools configuration file).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from setuptools import build_meta

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def _scratch_folders() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="completedp-hpo-build-") as scratch:
        config = Path(scratch, "scratch.cfg")
        config.write_text(f"[build]\nbuild_base = {scratch}/build\n\n[egg_info]\negg_base = {scratch}\n")
        previous = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = str(config)
        try:
            yield
        finally:
            if previous is None:
                del os.environ["DIST_EXTRA_CONFIG"]
            else:
                os.environ["DIST_EXTRA_CONFIG"] = previous


def _in_scratch(hook: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(hook)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with _scratch_folders():
            return hook(*args, **kwargs)

    return run


get_requires_for_build_wheel = _in_scratch(build_meta.get_requires_for_build_wheel)
get_requires_for_build_sdist = _in_scratch(build_meta.get_requires_for_build_sdist)
get_requires_for_build_editable = _in_scratch(build_meta.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _in_scratch(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _in_scratch(build_meta.prepare_metadata_for_build_editable)
build_wheel = _in_scratch(build_meta.build_wheel)
build_sdist = _in_scratch(build_meta.build_sdist)
build_editable = _in_scratch(build_meta.build_editable)
