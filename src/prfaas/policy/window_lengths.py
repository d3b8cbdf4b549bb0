"""The controller's window of incremental lengths as a length model.

`WindowLengths` is the empirical distribution of the lengths the router saw in the controller's
window, with what `prfaas.policy.throughput.best_threshold` and `evaluate` ask of a length model
(P(L > t), the mean over a range, quantiles) answered by bisection over prefix sums.
"""

from __future__ import annotations

import bisect
import itertools
import math


class WindowLengths:
    """An empirical length model over the window's samples (what `best_threshold` needs)."""

    __slots__ = ("_prefix_sums", "_values")

    def __init__(self, values: list[float]) -> None:
        if not values:
            raise ValueError("a length window needs at least one sample")
        self._values = sorted(values)
        self._prefix_sums = [0.0, *itertools.accumulate(self._values)]

    def __len__(self) -> int:
        return len(self._values)

    @property
    def max_tokens(self) -> float:
        return self._values[-1]

    def mean(self) -> float:
        return self._prefix_sums[-1] / len(self._values)

    def quantile(self, q: float) -> float:
        """The sample at rank ceil(q * n) (nearest rank), q in [0, 1]."""
        k = min(len(self._values) - 1, max(0, math.ceil(q * len(self._values)) - 1))
        return self._values[k]

    def prob_greater(self, num_tokens: float) -> float:
        n = len(self._values)
        return (n - bisect.bisect_right(self._values, num_tokens)) / n

    def mean_between(self, lo_tokens: float, hi_tokens: float) -> float:
        i = bisect.bisect_right(self._values, lo_tokens)
        j = bisect.bisect_right(self._values, hi_tokens)
        if j <= i:
            raise ValueError(f"no samples in ({lo_tokens}, {hi_tokens}]")
        return (self._prefix_sums[j] - self._prefix_sums[i]) / (j - i)
