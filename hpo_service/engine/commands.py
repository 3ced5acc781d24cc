"""What the API may ask of the engine: create a search, pause, resume or cancel one.

Each command is a small transaction on the store followed by a wake-up of the engine, which carries it out
on its next turn. The API never talks to the policy or to Ray.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from hpo_service.spec import SearchSpec
from hpo_service.store import writes
from hpo_service.store.database import transaction
from hpo_service.store.models import Search
from hpo_service.store.writes import CommandError, SearchNotFound

__all__ = ["CommandError", "Commands", "SearchNotFound"]


class Commands:
    def __init__(self, sessions: sessionmaker[Session], wake: Callable[[], None] = lambda: None) -> None:
        self.sessions, self.wake = sessions, wake

    def create(self, spec: SearchSpec) -> Search:
        with transaction(self.sessions) as session:
            search = writes.create_search(session, spec.name, spec.to_json(), spec.digest())
        self.wake()
        return search

    def apply(self, search_id: int, command: str) -> Search:
        """Pause, resume or cancel; a search already in the target status is left as it is."""
        with transaction(self.sessions) as session:
            search = writes.apply_command(session, search_id, command)
        self.wake()
        return search
