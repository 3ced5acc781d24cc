"""What a submitted spec may make the server do, by the server's own settings: import a trial function only if
its name is allowed, ask for sizes within the operator's limits, and train on data that is there, under the
data roots, and fit for the model. A spec that asks for more is a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from hpo_service.api.deps import SessionDep, SettingsDep
from hpo_service.api.spec_body import SpecBody
from hpo_service.api.spec_limits import SpecLimits
from hpo_service.engine.entrypoints import EntrypointError, check_allowed, load_trial
from hpo_service.export import StartError, starting_point
from hpo_service.spec import SearchSpec
from trainer.data import TOKEN_SPLITS, DataError, DataSource, check_corpus

DATA_LOC = ("body", "training", "data")
ROOTS_RULE = (
    "relative paths are resolved against the server's data roots, which an operator sets with "
    "`hpo serve --data-root` or HPO_DATA_ROOTS"
)


def admitted_spec(spec: SpecBody, settings: SettingsDep, session: SessionDep) -> SearchSpec:
    """The spec as the server stores it, once the settings admit it."""
    check_trial_allowed(spec, settings.allowed_trials)
    check_limits(spec, settings.limits)
    check_start(spec, session)
    return with_checked_data(spec, settings.data_roots)


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


def check_start(spec: SearchSpec, session: Session) -> None:
    """A ``start_from`` must name a result this spec can start from (``export.starting_point``)."""
    try:
        starting_point(session, spec)
    except StartError as exc:
        field = "search" if spec.start_from.search is not None else "export"
        error = {"type": "start_from", "loc": ("body", "start_from", field), "msg": str(exc)}
        raise RequestValidationError([error]) from None


def check_limits(spec: SearchSpec, limits: SpecLimits) -> None:
    """Every size of the spec within the operator's limits."""
    errors = limits.violations(spec)
    if errors:
        raise RequestValidationError(errors)


def with_checked_data(spec: SearchSpec, roots: tuple[Path, ...]) -> SearchSpec:
    """The spec with its data file's path resolved, once the data is found fit to train on (``check_corpus``).

    A spec may only make the workers read files under the server's data roots (symlinks resolved); a relative
    path is resolved against them, in turn. The path is stored absolute, so that workers, whatever their
    working directory, read the file checked here. Errors show the path relative to its data root, never the
    server's own absolute paths. A spec that names its own trial function is not held to what the built-in
    trainer needs of its data: that function decides.
    """
    source = DataSource.parse(spec.training.data)
    if source.path is None:
        _check_data(spec, source, shown=str(source))
        return spec
    root, resolved = _locate(source, roots)
    if _exists(resolved) and resolved.is_dir():
        _check_files_within(source, resolved, roots)
    note = "" if source.path.expanduser().is_absolute() else f"; {ROOTS_RULE}"
    _check_data(spec, source.at(resolved), shown=str(source.at(resolved.relative_to(root))), note=note)
    training = spec.training.model_copy(update={"data": str(source.at(resolved))})
    return spec.model_copy(update={"training": training})


def _locate(source: DataSource, roots: tuple[Path, ...]) -> tuple[Path, Path]:
    """The data root ``source`` reads under and its resolved path: the first root under which it exists,
    else the first under which it would be."""
    path = source.path.expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    within = []
    for candidate in candidates:
        resolved = candidate.resolve()
        root = next((root for root in roots if resolved.is_relative_to(root)), None)
        if root is not None:
            if _exists(resolved):
                return root, resolved
            within.append((root, resolved))
    if within:
        return within[0]
    raise _data_error(f"{source} is outside the server's data roots; {ROOTS_RULE}")


def _check_files_within(source: DataSource, directory: Path, roots: tuple[Path, ...]) -> None:
    """None of the files a directory's source reads (every file under a ``text:`` one, a ``tokens:`` one's
    train.bin and val.bin) may lead outside the data roots by a symlink."""
    files = directory.rglob("*") if source.kind == "text" else (directory / name for name in TOKEN_SPLITS)
    for file in files:
        if file.is_file() and not any(file.resolve().is_relative_to(root) for root in roots):
            raise _data_error(f"{source} holds {file.relative_to(directory)}, which leads outside the data roots")


def _check_data(spec: SearchSpec, source: DataSource, *, shown: str, note: str = "") -> None:
    if spec.execution.trial is not None:
        return
    try:
        check_corpus(
            source,
            vocab_size=spec.model.vocab_size,
            seq_len=spec.model.seq_len,
            val_fraction=spec.training.val_fraction,
        )
    except DataError as exc:
        raise _data_error(f"{shown} {exc}{note}") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long: as good as absent
        return False


def _data_error(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "data", "loc": DATA_LOC, "msg": message}])
