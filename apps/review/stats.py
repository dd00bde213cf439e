"""The statistics of the gate, in pure Python (no scipy on the control plane).

``clopper_pearson_lower(x, n)`` is the exact one-sided lower confidence bound of a binomial
proportion: the ``p`` for which seeing ``x`` or more passes out of ``n`` has probability
``alpha``. It equals the ``alpha`` quantile of Beta(x, n - x + 1), found here by bisection on
the regularized incomplete beta function (Lentz's continued fraction, as in Numerical Recipes
§6.4). Bisection is slow in theory and irrelevant in practice: 100 halvings of [0, 1] give
full double precision in well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_EPS = 1e-15
_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only on one side of the mean; use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b): the x with I_x(a, b) = q (bisection)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2.0


def clopper_pearson_lower(x: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact lower bound of a pass rate: ``x`` passes out of ``n`` reviewed.

    0 passes (or nothing reviewed) bounds nothing: 0.0. With every item passing it has the
    closed form ``(1 - confidence) ** (1 / n)``: 299 clean reviews give 0.99003.
    """
    if n < 0 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if x == 0:
        return 0.0
    if x == n:
        return alpha ** (1.0 / n)
    return beta_ppf(alpha, x, n - x + 1)


def min_clean_sample(threshold: float, confidence: float = 0.95) -> int:
    """How many reviews, all passing, it takes for the lower bound to reach ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    n = math.ceil(math.log(1.0 - confidence) / math.log(threshold))
    # Guard the float edge: the closed form must really clear the threshold at n.
    while (1.0 - confidence) ** (1.0 / n) < threshold:
        n += 1
    return n


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when it is undefined.

    Undefined when there are no pairs or when chance agreement is total (both raters gave
    one and the same label to everything): kappa is 0/0 there, and pretending otherwise
    would hide that the subset carries no information about agreement.
    """
    n = len(pairs)
    if n == 0:
        return None
    labels = sorted({label for pair in pairs for label in pair})
    observed = sum(1 for a, b in pairs if a == b) / n
    expected = sum(
        (sum(1 for a, _ in pairs if a == label) / n) * (sum(1 for _, b in pairs if b == label) / n)
        for label in labels
    )
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)
