"""Latency histograms: fixed buckets, cheap to observe on the request path, quantiles estimated.

Buckets are Prometheus-style upper bounds in seconds; a quantile is interpolated linearly
inside its bucket (what Prometheus' histogram_quantile does).
"""

from __future__ import annotations

from bisect import bisect_left

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)


class Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def copy(self) -> "Histogram":
        other = Histogram()
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other

    def since(self, earlier: "Histogram") -> "Histogram":
        """The observations made after ``earlier`` (a copy of this histogram) was taken."""
        delta = Histogram()
        delta.counts = [a - b for a, b in zip(self.counts, earlier.counts)]
        delta.sum, delta.count = self.sum - earlier.sum, self.count - earlier.count
        return delta

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile (0 < q < 1); None without observations."""
        if self.count == 0:
            return None
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lower = BUCKETS[i - 1] if i > 0 else 0.0
                upper = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
        return BUCKETS[-1]

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) pairs, ending with (inf, count)."""
        out, total = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out

    def summary(self) -> dict:
        return {"count": self.count, "sum": round(self.sum, 6),
                **{f"p{int(q * 100)}": _round(self.quantile(q)) for q in (0.5, 0.9, 0.99)}}


def _round(value):
    return None if value is None else round(value, 6)
