"""Down-sampling on the server: what a chart needs to look right, in a bounded number of points."""

from __future__ import annotations

from collections.abc import Sequence


def evenly(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)``, the first and the last included."""
    if n <= k:
        return list(range(n))
    if k <= 1:
        return [0][:k]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def envelope(values: Sequence[float], buckets: int) -> list[int]:
    """Indices of the lowest and the highest value in each of ``buckets`` consecutive runs of ``values``: a
    scatter of them keeps the outline of the cloud and its extremes."""
    n = len(values)
    if n <= 2 * buckets:
        return list(range(n))
    keep: set[int] = set()
    for bucket in range(buckets):
        run = range(bucket * n // buckets, (bucket + 1) * n // buckets)
        keep.add(min(run, key=values.__getitem__))
        keep.add(max(run, key=values.__getitem__))
    return sorted(keep)
