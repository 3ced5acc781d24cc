"""The words for where a search or a trial stands, defined once: the store, the engine, the API, the CLI and
the dashboard (through ``/api/meta``) all read them from here."""

from __future__ import annotations

from enum import StrEnum


class SearchStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TrialStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DIVERGED = "diverged"
    STOPPED = "stopped"  # by the early-stopping rule: its curve ends where it stopped
    CANCELLED = "cancelled"


class GenerationStatus(StrEnum):
    RUNNING = "running"  # some of its trials are still to end
    COMPLETED = "completed"  # all ended, and the optimizer was told


ACTIVE_SEARCH = frozenset({SearchStatus.QUEUED, SearchStatus.RUNNING, SearchStatus.PAUSED})
FINAL_SEARCH = frozenset(SearchStatus) - ACTIVE_SEARCH  # a search in one of these never changes again

FINAL_TRIAL = frozenset(
    {TrialStatus.SUCCEEDED, TrialStatus.FAILED, TrialStatus.DIVERGED, TrialStatus.STOPPED, TrialStatus.CANCELLED}
)
# What a finished training run can report; the optimizer is told each of these (a penalty if diverged or failed,
# a predicted final loss if stopped: ``early_stopping.predicted_final``).
TRIAL_OUTCOMES = frozenset({TrialStatus.SUCCEEDED, TrialStatus.DIVERGED, TrialStatus.STOPPED, TrialStatus.FAILED})
UNFINISHED_TRIAL = frozenset({TrialStatus.PENDING, TrialStatus.RUNNING})

# The commands a user may give a search: the statuses each moves a search from, and the one it moves it to.
SEARCH_COMMANDS: dict[str, tuple[frozenset[SearchStatus], SearchStatus]] = {
    "pause": (frozenset({SearchStatus.QUEUED, SearchStatus.RUNNING}), SearchStatus.PAUSED),
    "resume": (frozenset({SearchStatus.PAUSED}), SearchStatus.RUNNING),
    "cancel": (ACTIVE_SEARCH, SearchStatus.CANCELLED),
}


class TrialKind(StrEnum):
    """Why a trial trains: to search, to re-train a stage's top candidates on fresh seeds before one is chosen,
    or to check the chosen HPs at a larger target shape."""

    SEARCH = "search"
    REEVALUATION = "reevaluation"
    VALIDATION = "validation"
