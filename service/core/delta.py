"""`Delta`: the live catalogue changes of one engine, searched exactly beside its ANN index.

An index version holds the catalogue as it was built; the change log (`service.store.changelog`)
holds what changed since (`changes_through` in the manifest says where the version stands).
A `Delta` is those changes applied for one engine: the upserted items with the vectors that
engine's model computes for them (`encode`: `service.jobs.catalog.encode_items`, the rebuild's
own encoding), in a small exact index, and the retired ids. It is immutable: applying changes
returns a new one, which the engine's one `delta` reference is set to, so a search holds a
consistent snapshot whatever is applied meanwhile.

What it changes in a search: main-index rows of retired or upserted ids are masked inside the
ANN search (`hidden_rows`: an upserted id's vector is the delta's now), the delta's rows are
scored exactly under the same filters, and the two top-k lists are merged by score
(`merge`), so k items come back whenever k are eligible.

What a search needs is built once per delta, when it is made (`__post_init__`), never per
search: a FAISS `IndexFlatIP` over the rows (one exact search per batch, which releases the
GIL), an `IDSelectorBitmap` of the live rows, the surfaces as integer codes (a filter's mask is
one gather) and the model rows the live rows' ids hold (the blend's upserted neighbours, by a
binary search). A search under filters builds only the selector of its own mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import faiss
import numpy as np

from index.item_index import bitmap_selector
from models.embedder import ItemSpec
from service.core.filters import Filters
from service.store.changelog import CatalogueItem, CatalogueState, Change

Encode = Callable[[Sequence[ItemSpec]], np.ndarray]  # items -> (B, D) float32 served vectors
Rows = Callable[[Sequence[str]], np.ndarray]  # item ids -> (M,) rows, -1 if absent


def _no_rows() -> np.ndarray:
    return np.empty(0, np.int64)


def _no_codes() -> np.ndarray:
    return np.empty(0, np.int32)


@dataclass(frozen=True)
class Delta:
    """Arrays are append-only between compactions: an upsert appends a row (the id's earlier
    row, if any, is marked dead), a retirement marks its row dead; `row` maps each live id to
    its row. Applying a change costs the new rows plus array copies (and the search structures
    built from them), not a pass in Python over every item held; dead rows are dropped once
    they outnumber the live ones."""

    base_seq: int  # the change log position the index version was built through
    seq: int  # the last change applied (== base_seq: none)
    upserts: dict[str, CatalogueItem] = field(default_factory=dict)  # id -> as sent
    retired: frozenset[str] = frozenset()
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, object))  # (n,) str
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))  # (n, D)
    search_vectors: np.ndarray = field(  # (n, d): in the index's space (a Matryoshka prefix)
        default_factory=lambda: np.empty((0, 0), np.float32)
    )
    alive: np.ndarray = field(default_factory=lambda: np.empty(0, bool))  # (n,) live rows
    row: dict[str, int] = field(default_factory=dict)  # live id -> row of the arrays above
    surface_code: dict[str, int] = field(default_factory=dict)  # surface -> its code
    surface_codes: np.ndarray = field(default_factory=_no_codes)  # (n,) int32: surfaces' codes
    model_rows: np.ndarray = field(default_factory=_no_rows)  # (n,) the id's model row, -1: none
    hidden_rows: np.ndarray = field(default_factory=_no_rows)  # main rows: retired, upserted
    retired_rows: np.ndarray = field(default_factory=_no_rows)  # main rows: retired
    # built from the fields above once, when the delta is made (`__post_init__`)
    flat: faiss.IndexFlatIP | None = field(init=False, repr=False, compare=False)  # every row
    live: faiss.IDSelector | None = field(init=False, repr=False, compare=False)  # None: all
    held_model_rows: np.ndarray = field(init=False, repr=False, compare=False)  # (h,) sorted
    held_rows: np.ndarray = field(init=False, repr=False, compare=False)  # (h,) their rows

    def __post_init__(self) -> None:
        """The search structures (the delta is frozen: set once, here, never changed)."""
        flat = None
        if len(self.ids):
            flat = faiss.IndexFlatIP(self.search_vectors.shape[1])
            flat.add(np.ascontiguousarray(self.search_vectors, dtype=np.float32))
        known = np.flatnonzero(self.alive & (self.model_rows >= 0))  # (h,) live, in the model
        order = np.argsort(self.model_rows[known], kind="stable")
        object.__setattr__(self, "flat", flat)
        object.__setattr__(self, "live", None if self.alive.all() else bitmap_selector(self.alive))
        object.__setattr__(self, "held_model_rows", self.model_rows[known][order])
        object.__setattr__(self, "held_rows", known[order])

    @classmethod
    def empty(cls, base_seq: int) -> Delta:
        return cls(base_seq, base_seq)

    @property
    def surfaces(self) -> np.ndarray:
        """(n,) each row's surface ("" when upserted without one), from the codes."""
        names = np.empty(len(self.surface_code), object)
        names[list(self.surface_code.values())] = list(self.surface_code)
        return names[self.surface_codes]

    @property
    def count(self) -> int:
        """Upserted items held in the exact index."""
        return len(self.row)

    @property
    def size(self) -> int:
        """Distinct ids changed: upserted or retired (what the delta limit bounds)."""
        return len(self.upserts) + len(self.retired)

    def size_after(self, changes: Sequence[Change]) -> int:
        """The size once `changes` are applied (a call's own change included, before it is
        written: what the delta limit is checked against)."""
        state = CatalogueState(dict(self.upserts), set(self.retired))
        for change in changes:
            state.apply(change)
        return state.size

    def applied(
        self,
        changes: Sequence[Change],
        encode: Encode,
        cut: Callable[[np.ndarray], np.ndarray],
        main_rows: Rows,
        model_rows: Rows,
    ) -> Delta:
        """This delta with `changes` applied (those at or before `seq` are skipped): upserted
        items encoded by `encode`, cut to the index's space by `cut`, main-index rows by
        `main_rows`, rows in the model (the blend's catalogue) by `model_rows`."""
        changes = [c for c in changes if c.seq > self.seq]
        if not changes:
            return self
        state = CatalogueState(dict(self.upserts), set(self.retired))
        touched: dict[str, None] = {}
        for change in changes:
            state.apply(change)
            touched.update(dict.fromkeys(change.ids))
        fresh = [i for i in touched if i in state.upserts]  # upserted: new rows
        encoded = encode([(i, state.upserts[i].surface, state.upserts[i].features) for i in fresh])
        alive = self.alive.copy()
        row = dict(self.row)
        for item_id in touched:  # their earlier rows are dead now
            old = row.pop(item_id, None)
            if old is not None:
                alive[old] = False
        n = len(self.ids)
        row.update((item_id, n + r) for r, item_id in enumerate(fresh))
        vectors = np.concatenate([self.vectors, encoded]) if n else encoded  # (n', D)
        added = cut(encoded) if len(encoded) else encoded
        if added is encoded and (not n or self.search_vectors is self.vectors):
            search_vectors = vectors  # the index holds full vectors: one copy serves both
        else:
            search_vectors = np.concatenate([self.search_vectors, added]) if n else added
        ids = np.concatenate([self.ids, np.asarray(fresh, dtype=object)])
        new_surfaces = [state.upserts[i].surface or "" for i in fresh]
        surface_code = dict(self.surface_code)
        new_codes = [surface_code.setdefault(s, len(surface_code)) for s in new_surfaces]
        surface_codes = np.concatenate([self.surface_codes, np.asarray(new_codes, np.int32)])
        alive = np.concatenate([alive, np.ones(len(fresh), bool)])
        touched_rows = main_rows(list(touched))  # (t,)
        unretired = [i for i in touched if i not in state.retired]
        retired_now = [i for i in touched if i in state.retired]
        retired_rows = np.union1d(
            np.setdiff1d(self.retired_rows, main_rows(unretired)), main_rows(retired_now)
        )
        delta = Delta(
            base_seq=self.base_seq,
            seq=changes[-1].seq,
            upserts=state.upserts,
            retired=frozenset(state.retired),
            ids=ids,
            vectors=vectors,
            search_vectors=search_vectors,
            alive=alive,
            row=row,
            surface_code=surface_code,
            surface_codes=surface_codes,
            model_rows=np.concatenate([self.model_rows, model_rows(fresh)]),
            hidden_rows=np.union1d(self.hidden_rows, touched_rows[touched_rows >= 0]),
            retired_rows=retired_rows[retired_rows >= 0],
        )
        return delta.compacted() if len(ids) > 2 * max(len(row), 64) else delta

    def compacted(self) -> Delta:
        """The same delta without its dead rows."""
        keep = np.flatnonzero(self.alive)  # (m,)
        ids = self.ids[keep]
        vectors = self.vectors[keep]
        shared = self.search_vectors is self.vectors
        return replace(
            self,
            ids=ids,
            surface_codes=self.surface_codes[keep],
            model_rows=self.model_rows[keep],
            vectors=vectors,
            search_vectors=vectors if shared else self.search_vectors[keep],
            alive=np.ones(len(keep), bool),
            row={item_id: r for r, item_id in enumerate(ids.tolist())},
        )

    # ------------------------------------------------------------------ search
    def eligible(self, filters: Filters) -> np.ndarray:
        """(n,) bool mask of the live delta rows passing the filters (`alive` itself when they
        name no surface and exclude no id the delta holds)."""
        mask = self.alive
        if filters.surfaces is not None:
            codes = [self.surface_code[s] for s in filters.surfaces if s in self.surface_code]
            wanted = np.zeros(len(self.surface_code), bool)  # by surface code
            wanted[codes] = True
            mask = mask & wanted[self.surface_codes]
        if filters.exclude:
            rows = [self.row[i] for i in filters.exclude if i in self.row]
            if rows:
                mask = mask.copy() if mask is self.alive else mask
                mask[rows] = False
        return mask

    def search(
        self, queries: np.ndarray, k: int, filters: Filters
    ) -> list[tuple[list[str], np.ndarray]]:
        """Exact top-k (ids, scores desc) of each query (B, d) among eligible delta rows: one
        search of the flat index, the rows that may not be returned left out by a selector
        (the live rows' one, made with the delta, unless the filters leave out more)."""
        mask = self.eligible(filters)  # (n,)
        eligible = self.count if mask is self.alive else int(np.count_nonzero(mask))
        if self.flat is None or not eligible:
            return [([], np.empty(0, np.float32))] * len(queries)
        selector = self.live if mask is self.alive else bitmap_selector(mask)
        params = None
        if selector is not None:
            params = faiss.SearchParameters()
            params.sel = selector
        q = np.ascontiguousarray(queries, dtype=np.float32)  # (B, d)
        scores, rows = self.flat.search(q, min(k, eligible), params=params)  # (B, top)
        out = []
        for s, r in zip(scores, rows, strict=True):
            found = r >= 0  # all of them: min(k, eligible) rows pass the selector
            out.append((self.ids[r[found]].tolist(), s[found]))
        return out

    def rows_of_model(self, model_rows: np.ndarray) -> np.ndarray:
        """(P,) the live delta row holding the id of each model row (P,), -1: none."""
        out = np.full(len(model_rows), -1, np.int64)
        keys = self.held_model_rows  # (h,) sorted
        if keys.size and len(model_rows):
            at = np.searchsorted(keys, model_rows).clip(max=keys.size - 1)  # (P,)
            hit = keys[at] == model_rows
            out[hit] = self.held_rows[at[hit]]
        return out


def merge(
    main: tuple[list[str], np.ndarray], delta: tuple[list[str], np.ndarray], k: int
) -> tuple[list[str], np.ndarray]:
    """The k best of the main index's and the delta's results, by score (ties: the main
    index's first). Their ids are disjoint: an upserted id's main row is hidden."""
    if not delta[0]:
        return main
    scores = np.concatenate([main[1], delta[1]]).astype(np.float32, copy=False)  # (m + d,)
    order = np.argsort(-scores, kind="stable")[:k]
    ids = [*main[0], *delta[0]]
    return [ids[i] for i in order], scores[order]
