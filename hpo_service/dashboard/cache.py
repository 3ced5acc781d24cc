"""The dashboard's aggregate answers, kept until the trials they are computed from change.

Every open dashboard polls the same aggregates. They depend only on the search's ended trials, and a trial
that ended stays ended, so the search's trial counts by status identify them: a cheap grouped count decides
whether a kept answer is still the answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

from sqlalchemy.orm import Session

from hpo_service.store import queries

T = TypeVar("T")


class AnswerCache:
    """At most ``size`` answers, least recently used dropped first; safe across the server's threads."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[Hashable, object]] = OrderedDict()
        self._lock = threading.Lock()

    def answer(self, session: Session, search_id: int, key: Hashable, compute: Callable[[], T]) -> T:
        version = tuple(sorted(queries.trial_counts(session, [search_id])[search_id].items()))
        with self._lock:
            kept = self._answers.get(key)
            if kept is not None and kept[0] == version:
                self._answers.move_to_end(key)
                return kept[1]  # type: ignore[return-value]
        answer = compute()
        with self._lock:
            self._answers[key] = (version, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer
