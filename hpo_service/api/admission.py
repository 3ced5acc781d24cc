"""What a submitted spec may make the server do, by the server's own settings: import a trial function only if
its name is allowed, and read data only under the data roots. A spec that asks for more is a 422."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import RequestValidationError

from hpo_service.api.deps import SettingsDep
from hpo_service.api.spec_body import SpecBody
from hpo_service.engine.entrypoints import EntrypointError, check_allowed, load_trial
from hpo_service.spec import SearchSpec
from trainer.data import DataSource


def admitted_spec(spec: SpecBody, settings: SettingsDep) -> SearchSpec:
    """The spec as the server stores it, once the settings admit it."""
    check_trial_allowed(spec, settings.allowed_trials)
    return with_data_within_roots(spec, settings.data_roots)


AdmittedSpec = Annotated[SearchSpec, Depends(admitted_spec)]


def check_trial_allowed(spec: SearchSpec, patterns: tuple[str, ...]) -> None:
    """A spec may name a trial function to import only if the server's configuration allows that name."""
    name = spec.execution.trial
    if name is None:
        return
    try:
        check_allowed(name, list(patterns))
        load_trial(name)
    except EntrypointError as exc:
        error = {"type": "trial", "loc": ("body", "execution", "trial"), "msg": str(exc)}
        raise RequestValidationError([error]) from None


def with_data_within_roots(spec: SearchSpec, roots: tuple[Path, ...]) -> SearchSpec:
    """A spec may only make the workers read files under the server's data roots (symlinks resolved). The
    path is stored absolute, so that workers, whatever their working directory, read the file checked here."""
    source = DataSource.parse(spec.training.data)
    if source.path is None:
        return spec
    resolved = source.path.expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none"
        message = f"reads {resolved}, outside the server's data roots ({allowed}; see HPO_DATA_ROOTS)"
        raise RequestValidationError([{"type": "data_root", "loc": ("body", "training", "data"), "msg": message}])
    training = spec.training.model_copy(update={"data": str(source.at(resolved))})
    return spec.model_copy(update={"training": training})
