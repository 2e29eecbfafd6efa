"""The orders the benchmark runs its tools in: what one run leaves the machine doing
is met by the next, so no tool may always come right after the same other one."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from bench.compare import balanced_orders, round_orders


@pytest.mark.parametrize("n", range(2, 10))
def test_round_orders_put_each_member_after_each_other_equally_often(n: int) -> None:
    orders = round_orders(n)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    follows = Counter(pair for order in orders for pair in itertools.pairwise(order))
    # Every ordered pair of two members, and each as often as any other.
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(follows.values())) == 1
    # Each member in each place equally often as well.
    places = Counter((place, member) for order in orders for place, member in enumerate(order))
    assert len(places) == n * n and len(set(places.values())) == 1


@pytest.mark.parametrize("n", range(2, 7))
def test_balanced_orders_are_a_latin_square_with_few_repeated_neighbours(n: int) -> None:
    orders = balanced_orders(n)
    assert len(orders) == n
    assert all(sorted(order) == list(range(n)) for order in orders)
    for place in range(n):
        assert sorted(order[place] for order in orders) == list(range(n))
    follows = Counter(pair for order in orders for pair in itertools.pairwise(order))
    assert max(follows.values()) <= (1 if n % 2 == 0 else 2)
