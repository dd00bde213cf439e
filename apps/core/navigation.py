"""The navigation registry: each app adds its entries in ``AppConfig.ready``.

Core imports no other app, so apps push their menu items here with the roles that see them;
the context processor filters by the user's roles, so navigation always matches access.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

# A card's figures on the overview page: (label, value) pairs, cheap to compute (counts).
Summary = Callable[[], list[tuple[str, Any]]]


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    url_name: str
    roles: frozenset[str]
    order: int = 100
    summary: Summary | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        return reverse(self.url_name)


_items: dict[str, NavItem] = {}


def register(
    key: str,
    label: str,
    url_name: str,
    roles: frozenset[str] | set[str],
    order: int = 100,
    summary: Summary | None = None,
) -> None:
    """Add a menu entry; ``summary`` gives its card on the overview page a few figures."""
    _items[key] = NavItem(key, label, url_name, frozenset(roles), order, summary)


def items_for(user_roles: frozenset[str]) -> list[NavItem]:
    return sorted(
        (item for item in _items.values() if item.roles & user_roles),
        key=lambda item: (item.order, item.key),
    )


def all_items() -> list[NavItem]:
    return sorted(_items.values(), key=lambda item: (item.order, item.key))
