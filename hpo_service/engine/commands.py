"""What the API may ask of the engine: create a search, pause, resume or cancel one.

Each command is a small transaction on the store followed by a wake-up of the engine, which carries it out
on its next turn. The API never talks to the optimizer or to Ray.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from hpo_service.spec import SearchSpec
from hpo_service.store.database import transaction
from hpo_service.store.models import Search, utcnow

# The statuses each command moves a search from, and to.
TRANSITIONS = {
    "pause": (("queued", "running"), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("queued", "running", "paused"), "cancelled"),
}


class CommandError(Exception):
    """A command that does not apply to the search in its current state."""


class SearchNotFound(CommandError):
    pass


class Commands:
    def __init__(self, sessions: sessionmaker[Session], wake: Callable[[], None] = lambda: None) -> None:
        self.sessions, self.wake = sessions, wake

    def create(self, spec: SearchSpec) -> Search:
        with transaction(self.sessions) as session:
            search = Search(name=spec.name, spec_json=spec.model_dump(mode="json"), spec_hash=spec.digest())
            session.add(search)
        self.wake()
        return search

    def apply(self, search_id: int, command: str) -> Search:
        """Pause, resume or cancel; a search already in the target status is left as it is."""
        allowed, target = TRANSITIONS[command]
        with transaction(self.sessions) as session:
            search = session.get(Search, search_id, with_for_update=True)
            if search is None:
                raise SearchNotFound(f"no search with id {search_id}")
            if search.status != target:
                if search.status not in allowed:
                    raise CommandError(f"cannot {command} a search that is {search.status}")
                search.status = target
                if target == "cancelled":
                    search.finished_at = utcnow()
        self.wake()
        return search
