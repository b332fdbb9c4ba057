"""Flows arrange tasks: in sequence, unordered (free to run in parallel), or as a dependency graph.

Flows nest freely. ``add(*items)`` returns the flow, so a flow can be built in one expression. A
flow may carry a retry controller (``LinearFlow("f", retry=Times(3))``) that decides whether a
failure inside it reverts and re-runs the flow or propagates outwards. Flows only describe; the
engine compiles and validates them (see :mod:`workerflow.compiler`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Self, TypeAlias, Union

from workerflow.task import Task

if TYPE_CHECKING:
    from workerflow.retry import Retry

__all__ = ["Flow", "GraphFlow", "Item", "LinearFlow", "UnorderedFlow"]

#: What a flow holds: tasks and other flows.
Item: TypeAlias = Union[Task, "Flow"]


class Flow:
    """Base of the three flow kinds: a named, ordered collection of tasks and flows."""

    def __init__(self, name: str, *, retry: Retry | None = None) -> None:
        if not name:
            raise ValueError("a flow needs a name")
        self.name = name
        self.retry = retry
        self.items: list[Item] = []

    def add(self, *items: Item) -> Self:
        """Append tasks or flows; returns the flow."""
        for item in items:
            if not isinstance(item, (Task, Flow)):
                hint = " (decorate functions with @task)" if callable(item) else ""
                raise TypeError(f"a flow holds tasks and flows, not {item!r}{hint}")
            self.items.append(item)
        return self

    def iter_tasks(self) -> Iterator[Task]:
        """Every task in this flow and the flows nested in it, depth first."""
        for item in self.items:
            if isinstance(item, Flow):
                yield from item.iter_tasks()
            else:
                yield item

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({len(self.items)} items)>"


class LinearFlow(Flow):
    """Items run one after another, in the order added; later items see earlier results."""


class UnorderedFlow(Flow):
    """Items have no order among themselves and may run in parallel.

    They cannot consume each other's results: their inputs come from outside the flow.
    """


class GraphFlow(Flow):
    """Items ordered by data: an item needing a name runs after the item providing it.

    :meth:`link` adds an explicit ordering for items that share no data.
    """

    def __init__(self, name: str, *, retry: Retry | None = None) -> None:
        super().__init__(name, retry=retry)
        self.links: list[tuple[Item, Item]] = []

    def link(self, before: Item, after: Item) -> Self:
        """Make ``after`` run only once ``before`` has finished; both must be items of this flow."""
        self.links.append((before, after))
        return self
