"""ItemIndex: a FAISS index plus its row -> item id and row -> surface maps.

Search is thread-safe: per-call parameters (efSearch, nprobe) and the `allowed` row filter travel
in a faiss SearchParameters object, never as mutations of the shared index. Filtering happens
inside the ANN search through an IDSelectorBitmap; when the ANN search returns fewer than k
results although k eligible rows exist (HNSW under a restrictive filter), the search is retried
wider, and finally done exactly over the eligible rows' reconstructed vectors (for PQ codes,
the decoded vectors).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index.manifest import IndexIntegrityError

SUPPORTED_METRICS = ("ip",)
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
META_FILE = "index_meta.json"

DEFAULT_EF_SEARCH = 128
MAX_DEFAULT_NPROBE = 32
WIDEN_FACTOR = 4  # each retry multiplies efSearch / nprobe by this
MAX_WIDEN_STEPS = 2  # retries before falling back to exact search over the eligible rows
# Index files are memory-mapped where FAISS can (the codes of flat storage: Flat, HNSW, SQ, PQ),
# read-only: pages come from the page cache, so every worker process and every version loaded
# twice share one copy, and a load reads nothing until searched. A published version's files
# never change (a rebuild writes a new version directory), so the mapping stays valid.
READ_FLAGS = faiss.IO_FLAG_MMAP_IFC
EXACT_CHUNK_ROWS = 65_536  # rows reconstructed at a time by the exact fallback

_PARAM_NAMES = {"hnsw": ("efSearch",), "ivf": ("nprobe",), "flat": (), "other": ()}


def check_metric(metric: str) -> str:
    """Return `metric` if supported, else raise ValueError quoting it."""
    if metric not in SUPPORTED_METRICS:
        raise ValueError(f"metric {metric!r} is not supported; supported: {SUPPORTED_METRICS}")
    return metric


def _str_array(values: Iterable[str], n: int, what: str, per: str) -> np.ndarray:
    """`values` as an (n,) object array of str; ValueError quoting what is wrong."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a sequence of str, got the single str {values!r}")
    out_list = list(values)
    if len(out_list) != n:
        raise ValueError(f"got {len(out_list)} {what} for {n} {per}")
    bad = next((v for v in out_list if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"{what} must be str, got {bad!r} of type {type(bad).__name__}")
    out = np.empty(n, dtype=object)  # (N,)
    out[:] = out_list
    return out


def check_item_ids(item_ids: Iterable[str], n: int) -> np.ndarray:
    """Validate item ids (n of them, all str, unique); return an (n,) object array."""
    ids = _str_array(item_ids, n, "item ids", "vectors")
    if len(set(ids.tolist())) != n:
        dups = sorted(i for i, c in Counter(ids.tolist()).items() if c > 1)
        raise ValueError(f"item ids must be unique; {len(dups)} repeated, e.g. {dups[:5]}")
    return ids


def check_surfaces(surfaces: Iterable[str] | None, n: int) -> np.ndarray:
    """Validate surfaces (n str, or None meaning all unknown ""); return an (n,) object array."""
    return _str_array([""] * n if surfaces is None else surfaces, n, "surfaces", "items")


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-D array holding any NaN or inf."""
    return np.flatnonzero(~np.isfinite(x).all(axis=1))


def as_float_matrix(values: object, name: str, shape: str, dim: int | None = None) -> np.ndarray:
    """`values` as a C-contiguous 2-D float32 array with finite, non-empty rows (and `dim`
    columns when given); ValueError quoting the problem. `shape` names the axes, e.g. "(N, D)"."""
    try:
        x = np.ascontiguousarray(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a float array, got {type(values).__name__}") from e
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D {shape}, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have shape {x.shape} but the index has dim {dim}")
    if dim is None and (x.shape[0] == 0 or x.shape[1] == 0):
        raise ValueError(f"{name} must be non-empty, got shape {x.shape}")
    bad = nonfinite_rows(x)
    if bad.size:
        raise ValueError(
            f"{name} contain {bad.size} rows with NaN or inf, e.g. rows {bad[:5].tolist()}"
        )
    return x


def unwrap_index(index: faiss.Index) -> tuple[Any, bool]:
    """Return (the index under an optional IndexPreTransform, whether there was one)."""
    outer: Any = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        return faiss.downcast_index(outer.index), True
    return outer, False


def index_kind(index: faiss.Index) -> str:
    """Classify a faiss index as "hnsw", "ivf", "flat" or "other" (PQ, LSH, ...).

    The first three accept per-call SearchParameters with an ID selector; "other" indexes are
    searched without parameters, and filtered searches over them are done exactly.
    """
    inner, _ = unwrap_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if faiss.try_extract_index_ivf(inner) is not None:
        return "ivf"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return "other"


def default_search_params(index: faiss.Index) -> dict[str, int]:
    """Default per-call parameters: HNSW efSearch 128, IVF nprobe min(nlist, 32), else {}."""
    kind = index_kind(index)
    if kind == "hnsw":
        return {"efSearch": DEFAULT_EF_SEARCH}
    if kind == "ivf":
        return {"nprobe": min(faiss.extract_index_ivf(index).nlist, MAX_DEFAULT_NPROBE)}
    return {}


def ensure_direct_map(index: faiss.Index) -> None:
    """Give an IVF index a direct map so rows can be reconstructed (exact fallback)."""
    if index_kind(index) == "ivf":
        ivf: Any = faiss.extract_index_ivf(index)
        if ivf.direct_map.no():
            ivf.make_direct_map()


class ItemIndex:
    """A FAISS inner-product index over item vectors, with item ids and surfaces per row."""

    def __init__(
        self,
        faiss_index: faiss.Index,
        item_ids: Iterable[str],
        surfaces: Iterable[str] | None = None,
        *,
        index_type: str,
        metric: str = "ip",
        search_params: Mapping[str, int] | None = None,
    ) -> None:
        """Wrap a built (trained, filled) faiss index; `item_ids[r]` names row r."""
        self.metric = check_metric(metric)
        self.faiss_index = faiss_index
        self.index_type = index_type
        self.dim = int(faiss_index.d)
        self.count = int(faiss_index.ntotal)
        if self.count == 0:
            raise ValueError(f"index {index_type!r} holds no vectors")
        self.item_ids = check_item_ids(item_ids, self.count)  # (N,) str
        self.surfaces = check_surfaces(surfaces, self.count)  # (N,) str
        self._kind = index_kind(faiss_index)
        ensure_direct_map(faiss_index)
        params = default_search_params(faiss_index) if search_params is None else search_params
        self.search_params: dict[str, int] = self._check_params(params)
        self._row_of = {item_id: row for row, item_id in enumerate(self.item_ids)}
        vocab, codes = np.unique(self.surfaces, return_inverse=True)
        self._surface_code = {str(s): c for c, s in enumerate(vocab)}
        self._surface_codes = codes.astype(np.int32)  # (N,)

    def __repr__(self) -> str:
        return (
            f"ItemIndex(index_type={self.index_type!r}, metric={self.metric!r}, dim={self.dim}, "
            f"count={self.count}, search_params={self.search_params})"
        )

    # ----------------------------------------------------------------- lookups
    def row_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the given item ids as an (M,) int64 array, -1 for unknown ids."""
        if isinstance(item_ids, str):
            raise ValueError(f"item_ids must be an iterable of str, got the str {item_ids!r}")
        get = self._row_of.get
        return np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64)  # (M,)

    def surface_mask(self, surfaces: Iterable[str]) -> np.ndarray:
        """(N,) bool mask of the rows whose surface is one of `surfaces`."""
        if isinstance(surfaces, str):
            raise ValueError(f"surfaces must be an iterable of str, got the str {surfaces!r}")
        codes = [self._surface_code[s] for s in set(surfaces) if s in self._surface_code]
        return np.isin(self._surface_codes, np.asarray(codes, dtype=np.int32))  # (N,)

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | Eligible | None = None,
        params: Mapping[str, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product for each query.

        Returns (scores, rows): (B, k) float32 sorted descending and (B, k) int64, padded with
        -inf / -1 when fewer than k eligible rows exist. `allowed` is an (N,) bool mask of the
        eligible rows, or one prepared as `Eligible` (reused across searches); `params` override
        `search_params` for this call only. When at least k rows are eligible, every query gets
        k distinct eligible rows.
        """
        q = self._check_queries(queries)  # (B, D)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        eligible = self._check_allowed(allowed)  # None: every row
        call_params = self._check_params({**self.search_params, **(params or {})})
        n_eligible = self.count if eligible is None else eligible.count
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)  # (B, k)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)  # (B, k)
        if q.shape[0] == 0 or n_eligible == 0:
            return scores, rows
        selector, mask = None, None  # None: every row is eligible
        if eligible is not None and eligible.selector is not None:
            selector, mask = eligible.selector, eligible.mask
        need = min(k, n_eligible)
        if self._kind == "other" and mask is not None:  # cannot filter inside this index
            scores[:], rows[:] = self._exact_search(q, k, mask)
            return scores, rows
        todo = np.arange(q.shape[0])  # (b,) queries still short of `need` results
        step = call_params
        for attempt in range(MAX_WIDEN_STEPS + 1):
            s, r = self.faiss_index.search(q[todo], k, params=self._faiss_params(step, selector))
            scores[todo], rows[todo] = s, r  # (b, k)
            todo = todo[(r >= 0).sum(axis=1) < need]
            if todo.size == 0 or attempt == MAX_WIDEN_STEPS:
                break
            wider = self._widen(step)
            if wider is None:
                break
            step = wider
        if todo.size:
            scores[todo], rows[todo] = self._exact_search(q[todo], k, mask)
        scores[rows < 0] = -np.inf  # faiss pads with -FLT_MAX
        return scores, rows

    def set_search_params(self, params: Mapping[str, int]) -> None:
        """Replace the default per-call parameters (e.g. with tuned ones).

        For the build job only, before the index is shared: serving threads never call this.
        """
        self.search_params = self._check_params(params)

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        return as_float_matrix(queries, "queries", "(B, D)", dim=self.dim)

    def _check_allowed(self, allowed: np.ndarray | Eligible | None) -> Eligible | None:
        if allowed is None:
            return None
        mask = allowed.mask if isinstance(allowed, Eligible) else np.asarray(allowed)
        if mask.dtype != np.bool_ or mask.shape != (self.count,):
            raise ValueError(
                f"allowed must be a bool array of shape ({self.count},), "
                f"got dtype {mask.dtype} shape {mask.shape}"
            )
        return allowed if isinstance(allowed, Eligible) else Eligible(mask)

    def _check_params(self, params: Mapping[str, int]) -> dict[str, int]:
        names = _PARAM_NAMES[self._kind]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(
                f"search params {unknown} do not apply to index {self.index_type!r}; "
                f"accepted: {list(names)}"
            )
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"search param {name!r} must be a positive int, got {value!r}")
        return {name: int(value) for name, value in params.items()}

    def _faiss_params(
        self, params: Mapping[str, int], selector: faiss.IDSelector | None
    ) -> faiss.SearchParameters | None:
        """Build the per-call faiss SearchParameters (the shared index is never mutated)."""
        if self._kind == "other":
            return None  # e.g. IndexPQ refuses any SearchParameters
        if self._kind == "hnsw":
            sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # stubs lag SWIG
            if "efSearch" in params:
                sp.efSearch = params["efSearch"]
            else:
                sp.efSearch = unwrap_index(self.faiss_index)[0].hnsw.efSearch
        elif self._kind == "ivf":
            sp = faiss.SearchParametersIVF()
            sp.nprobe = params.get("nprobe", faiss.extract_index_ivf(self.faiss_index).nprobe)
        else:
            sp = faiss.SearchParameters()
        if selector is not None:
            sp.sel = selector
        if unwrap_index(self.faiss_index)[1]:
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = sp
            return outer
        return sp

    def _widen(self, params: Mapping[str, int]) -> dict[str, int] | None:
        """Next, wider search parameters, or None when widening cannot find more rows."""
        if self._kind == "hnsw":
            ef = params.get("efSearch", unwrap_index(self.faiss_index)[0].hnsw.efSearch)
            return None if ef >= self.count else {"efSearch": ef * WIDEN_FACTOR}
        if self._kind == "ivf":
            nlist = faiss.extract_index_ivf(self.faiss_index).nlist
            nprobe = params.get("nprobe", faiss.extract_index_ivf(self.faiss_index).nprobe)
            return None if nprobe >= nlist else {"nprobe": min(nprobe * WIDEN_FACTOR, nlist)}
        return None  # Flat and other exhaustive indexes: nothing to widen

    def _exact_search(
        self, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the eligible rows' reconstructed vectors; q is (b, D)."""
        candidates = np.arange(self.count) if mask is None else np.flatnonzero(mask)  # (M,)
        best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)  # (b, k)
        best_r = np.full((q.shape[0], k), -1, dtype=np.int64)  # (b, k)
        for start in range(0, candidates.size, EXACT_CHUNK_ROWS):
            chunk = candidates[start : start + EXACT_CHUNK_ROWS]  # (m,)
            vecs = self.faiss_index.reconstruct_batch(chunk)  # (m, D)
            s = np.concatenate([best_s, q @ vecs.T], axis=1)  # (b, k + m)
            r = np.concatenate([best_r, np.broadcast_to(chunk, (q.shape[0], chunk.size))], axis=1)
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (b, k)
            best_s = np.take_along_axis(s, top, axis=1)
            best_r = np.take_along_axis(r, top, axis=1)
        return best_s, best_r

    # ----------------------------------------------------------------- persistence
    def save(self, directory: Path) -> list[str]:
        """Write index.faiss, items.parquet and index_meta.json into `directory`; return names."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.faiss_index, str(directory / INDEX_FILE))
        table = pa.table(
            {
                "row": pa.array(np.arange(self.count, dtype=np.int64)),
                "item_id": pa.array(self.item_ids.tolist(), type=pa.string()),
                "surface": pa.array(self.surfaces.tolist(), type=pa.string()),
            }
        )
        pq.write_table(table, directory / ITEMS_FILE)
        meta = {
            "type": self.index_type,
            "metric": self.metric,
            "dim": self.dim,
            "count": self.count,
            "search_params": self.search_params,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return [INDEX_FILE, ITEMS_FILE, META_FILE]

    @classmethod
    def load(cls, directory: Path) -> ItemIndex:
        """Read an index written by `save`; raise IndexIntegrityError when files disagree."""
        directory = Path(directory)
        for name in (INDEX_FILE, ITEMS_FILE, META_FILE):
            if not (directory / name).is_file():
                raise IndexIntegrityError(f"index file {str(directory / name)!r} is missing")
        try:
            meta: dict[str, Any] = json.loads((directory / META_FILE).read_text())
            index_type, metric = meta["type"], meta["metric"]
            dim, count, params = meta["dim"], meta["count"], meta["search_params"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise IndexIntegrityError(f"bad {META_FILE} in {str(directory)!r}: {e!r}") from e
        try:
            faiss_index = faiss.read_index(str(directory / INDEX_FILE), READ_FLAGS)
            table = pq.read_table(directory / ITEMS_FILE)
        except (RuntimeError, OSError, pa.ArrowException) as e:
            raise IndexIntegrityError(f"cannot read index in {str(directory)!r}: {e}") from e
        if (faiss_index.d, faiss_index.ntotal) != (dim, count):
            raise IndexIntegrityError(
                f"{INDEX_FILE} has dim {faiss_index.d} and {faiss_index.ntotal} rows but "
                f"{META_FILE} says dim {dim} and {count} rows"
            )
        if set(table.column_names) != {"row", "item_id", "surface"} or table.num_rows != count:
            raise IndexIntegrityError(
                f"{ITEMS_FILE} has columns {table.column_names} and {table.num_rows} rows; "
                f"expected row, item_id, surface and {count} rows"
            )
        if not np.array_equal(table.column("row").to_numpy(), np.arange(count)):
            raise IndexIntegrityError(f"{ITEMS_FILE} rows are not 0..{count - 1} in order")
        try:
            return cls(
                faiss_index,
                table.column("item_id").to_pylist(),
                table.column("surface").to_pylist(),
                index_type=index_type,
                metric=metric,
                search_params=params,
            )
        except ValueError as e:
            raise IndexIntegrityError(f"index in {str(directory)!r} is inconsistent: {e}") from e


class Eligible:
    """An (N,) bool mask of the rows a search may return, with what a search needs from it
    computed once: the count of True rows and the FAISS selector. Prepared by whoever reuses a
    mask across searches (the serving engine, per filter and live catalogue delta), so a search
    does not pay O(N) per call to count and pack it."""

    __slots__ = ("count", "mask", "selector")

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask  # (N,) bool
        self.count = int(np.count_nonzero(mask))
        self.selector = bitmap_selector(mask) if self.count < len(mask) else None


def bitmap_selector(mask: np.ndarray) -> faiss.IDSelector:
    """An IDSelectorBitmap admitting the True rows of an (N,) bool mask."""
    bits = np.packbits(mask, bitorder="little")  # (ceil(N / 8),) uint8, row r is bit r % 8
    # The Python wrapper takes the array itself and keeps it alive; faiss's stubs only know the
    # C++ (n, pointer) signature.
    return faiss.IDSelectorBitmap(bits)  # type: ignore[call-arg, arg-type]
