"""CMA-ES state that survives a restart exactly.

The ``cma`` library keeps the solutions it asked in ``SolutionDict``s keyed by ``hash(x.tobytes())``. Python
salts ``bytes`` hashes per process (``PYTHONHASHSEED``), so a pickled dictionary read back by another process
has keys no lookup finds: the next tell then misses the solutions it sent, and CMA's update, hence the next
generation, differs from the uninterrupted search's. Registered here, such dictionaries pickle as their
entries and are rebuilt with this process's hashes.
"""

from __future__ import annotations

import copyreg

from cma.utilities.utils import SolutionDict

_REBUILT = ("data", "data_with_same_key", "_unhashed_keys")


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def _reduce(solutions: SolutionDict) -> tuple:
    state = {name: value for name, value in vars(solutions).items() if name not in _REBUILT}
    entries = [
        (solutions._unhashed_keys.get(key, key), value, solutions.data_with_same_key.get(key))
        for key, value in solutions.data.items()
    ]
    return _rebuild, (type(solutions), state, entries)


def _rebuild(cls: type, state: dict, entries: list) -> SolutionDict:
    solutions = cls.__new__(cls)
    vars(solutions).update(state, data={}, data_with_same_key={}, _unhashed_keys={})
    for unhashed, value, same_key in entries:
        key = solutions.key(unhashed)
        solutions.data[key] = value
        solutions._unhashed_keys[key] = unhashed
        if same_key:
            solutions.data_with_same_key[key] = same_key
    return solutions


def register() -> None:
    """Pickle every ``SolutionDict`` class (the library's subclasses included) by its entries."""
    import cma.evolution_strategy  # noqa: F401  (defines the subclasses the optimizer uses)

    for cls in _subclasses(SolutionDict):
        copyreg.pickle(cls, _reduce)
