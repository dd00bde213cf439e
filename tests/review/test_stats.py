"""The gate's statistics, against closed forms, the binomial definition and known values."""

from __future__ import annotations

import math

import pytest

from apps.review.stats import (
    beta_ppf,
    betainc,
    clopper_pearson_lower,
    cohen_kappa,
    min_clean_sample,
)


def binomial_tail(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), summed exactly term by term."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1))


def test_it_gives_0_990_for_299_clean_reviews():
    assert clopper_pearson_lower(299, 299) == pytest.approx(0.99003, abs=1e-5)
    assert clopper_pearson_lower(299, 299) >= 0.99
    assert clopper_pearson_lower(298, 298) < 0.99


def test_it_gives_0_9705_for_100_of_100():
    assert clopper_pearson_lower(100, 100) == pytest.approx(0.97049, abs=1e-5)


@pytest.mark.parametrize(
    ("x", "n", "expected"),
    [
        # One-sided 95% = lower end of the two-sided 90% exact interval. 9/10 from published
        # tables; the others from a 30-digit mpmath root of betainc(x, n-x+1, 0, p) = 0.05.
        (9, 10, 0.605837),
        (19, 20, 0.783894),
        (95, 100, 0.897747),
        (297, 300, 0.974359),
    ],
)
def test_it_matches_published_values(x, n, expected):
    assert clopper_pearson_lower(x, n) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("x", "n"), [(1, 1), (1, 5), (50, 100), (98, 100), (590, 600)])
def test_the_bound_is_where_the_binomial_tail_is_exactly_alpha(x, n):
    lower = clopper_pearson_lower(x, n)
    assert binomial_tail(x, n, lower) == pytest.approx(0.05, abs=1e-9)


def test_no_passes_bound_nothing():
    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(0, 0) == 0.0


def test_it_refuses_impossible_counts():
    with pytest.raises(ValueError):
        clopper_pearson_lower(5, 4)
    with pytest.raises(ValueError):
        clopper_pearson_lower(1, 2, confidence=1.0)


def test_the_incomplete_beta_matches_closed_forms():
    # I_x(1, 1) = x; I_x(a, 1) = x**a; I_x(1, b) = 1 - (1 - x)**b
    assert betainc(1, 1, 0.3) == pytest.approx(0.3, abs=1e-14)
    assert betainc(5, 1, 0.7) == pytest.approx(0.7**5, abs=1e-14)
    assert betainc(1, 7, 0.2) == pytest.approx(1 - 0.8**7, abs=1e-14)
    assert betainc(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-14)  # symmetry


def test_the_quantile_inverts_the_incomplete_beta():
    for a, b, q in [(3, 4, 0.05), (200, 2, 0.05), (0.5, 0.5, 0.9)]:
        assert betainc(a, b, beta_ppf(q, a, b)) == pytest.approx(q, abs=1e-12)


def test_it_says_how_many_clean_reviews_a_threshold_needs():
    assert min_clean_sample(0.99) == 299
    assert min_clean_sample(0.95) == 59


def test_kappa_is_one_for_perfect_agreement_with_variation():
    assert cohen_kappa([("pass", "pass"), ("fail", "fail"), ("pass", "pass")]) == pytest.approx(1.0)


def test_kappa_matches_a_worked_example():
    # 20 pairs: 12 both pass, 3 both fail, 3 pass/fail, 2 fail/pass.
    pairs = (
        [("pass", "pass")] * 12
        + [("fail", "fail")] * 3
        + [("pass", "fail")] * 3
        + [("fail", "pass")] * 2
    )
    po = 15 / 20
    pe = (15 / 20) * (14 / 20) + (5 / 20) * (6 / 20)
    assert cohen_kappa(pairs) == pytest.approx((po - pe) / (1 - pe))


def test_kappa_is_undefined_without_pairs_or_without_variation():
    assert cohen_kappa([]) is None
    assert cohen_kappa([("pass", "pass")] * 5) is None
