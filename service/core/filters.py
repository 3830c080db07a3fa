"""`Filters`: which items a retrieve may return, normalised once where a request enters the
serving core (`Filters.of`): surfaces and excluded ids as sorted tuples without repeats, so the
same filter is the same value everywhere after it (a batch groups searches by it, the engine
caches eligibility masks by it, cache keys and shard calls write it as it is)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Filters:
    surfaces: tuple[str, ...] | None = None  # sorted, unique; None: every surface
    exclude: tuple[str, ...] = ()  # sorted, unique item ids never returned (unknown ids ignored)

    @classmethod
    def of(cls, surfaces: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> Filters:
        return cls(
            None if surfaces is None else tuple(sorted(set(surfaces))),
            tuple(sorted(set(exclude))),
        )

    def excluding(self, more: Iterable[str]) -> Filters:
        """These filters with `more` ids excluded too (a user's seen items)."""
        return Filters(self.surfaces, tuple(sorted({*self.exclude, *more})))


NO_FILTERS = Filters()
