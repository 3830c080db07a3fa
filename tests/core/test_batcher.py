"""The dynamic batcher alone (no HTTP), then the engine's batched encode and search against the
same calls made one at a time on the real model and a real FAISS index. No timing assertions:
the waits below are for conditions (an item queued, a batch running), never for durations."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.core.batcher import Batcher, BatchStats
from service.core.filters import Filters
from service.errors import ErrorType, ServiceError

pytestmark = pytest.mark.anyio


class Recorder:
    """A run_batch that records the batches it was given; can hold the worker until released."""

    def __init__(self, hold: bool = False, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        if self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


async def until(condition: object) -> None:
    """Yield to the loop until `condition()` holds (bounded, so a bug fails instead of hanging)."""
    for _ in range(10_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_results_match_items_and_batches_respect_max_batch() -> None:
    run = Recorder(hold=True)
    batcher: Batcher[int, int] = Batcher(run, name="t", max_batch=4, max_wait=0.0, max_queue=100)
    first = asyncio.ensure_future(batcher.submit(0))
    await until(lambda: batcher.running == 1)  # worker busy with [0]: the rest queue up
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 11)]
    await until(lambda: batcher.depth == 10)
    run.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 11)]
    assert run.batches[0] == [0]
    assert [len(b) for b in run.batches[1:]] == [4, 4, 2]  # never more than max_batch
    assert sorted(i for b in run.batches for i in b) == list(range(11))  # each item once
    await batcher.aclose()


async def test_max_wait_gathers_items_arriving_after_the_first() -> None:
    run = Recorder()
    stats: list[BatchStats] = []
    batcher: Batcher[int, int] = Batcher(
        run, name="t", max_batch=8, max_wait=5.0, max_queue=100, on_batch=stats.append
    )
    # the first item waits (up to 5 s) for the batch to fill; max_batch items end the wait
    futures = []
    for i in range(8):
        futures.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0)  # separate arrivals, not one burst
    assert await asyncio.gather(*futures) == [i * 10 for i in range(8)]
    assert run.batches == [list(range(8))]
    assert stats[0].size == 8 and len(stats[0].queue_waits) == 8 and not stats[0].failed
    await batcher.aclose()


async def test_zero_max_wait_runs_what_is_there() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, name="t", max_batch=8, max_wait=0.0, max_queue=10)
    assert await batcher.submit(7) == 70
    assert run.batches == [[7]]
    await batcher.aclose()


async def test_a_failing_batch_fails_only_its_own_requests() -> None:
    run = Recorder(hold=True, fail_on=3)
    stats: list[BatchStats] = []
    batcher: Batcher[int, int] = Batcher(
        run, name="t", max_batch=3, max_wait=0.0, max_queue=100, on_batch=stats.append
    )
    first = asyncio.ensure_future(batcher.submit(0))
    await until(lambda: batcher.running == 1)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]  # [1,2,3] [4,5,6]
    await until(lambda: batcher.depth == 6)
    run.release.set()
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert results[0] == 0
    for r in results[1:4]:  # the batch holding item 3
        assert isinstance(r, RuntimeError) and "bad item 3" in str(r)
    assert results[4:] == [40, 50, 60]
    assert [s.failed for s in stats] == [False, True, False]
    assert await batcher.submit(8) == 80  # the worker survived
    await batcher.aclose()


async def test_full_queue_rejects_at_once_with_overloaded() -> None:
    run = Recorder(hold=True)
    batcher: Batcher[int, int] = Batcher(run, name="enc", max_batch=2, max_wait=0.0, max_queue=2)
    running = asyncio.ensure_future(batcher.submit(0))
    await until(lambda: batcher.running == 1)
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await until(lambda: batcher.depth == 2)
    with pytest.raises(ServiceError) as info:
        await batcher.submit(3)  # returns without waiting for the held worker
    assert info.value.error_type is ErrorType.OVERLOADED
    assert "enc queue is full" in info.value.message
    run.release.set()
    assert await asyncio.gather(running, *queued) == [0, 10, 20]
    assert await batcher.submit(4) == 40  # accepts again once drained
    await batcher.aclose()


async def test_cancelled_callers_are_dropped_and_close_fails_the_rest() -> None:
    run = Recorder(hold=True)
    batcher: Batcher[int, int] = Batcher(run, name="t", max_batch=8, max_wait=0.0, max_queue=8)
    running = asyncio.ensure_future(batcher.submit(0))
    await until(lambda: batcher.running == 1)
    gone = asyncio.ensure_future(batcher.submit(1))
    kept = asyncio.ensure_future(batcher.submit(2))
    await until(lambda: batcher.depth == 2)
    gone.cancel()
    run.release.set()
    assert await running == 0 and await kept == 20
    assert [1] not in run.batches and all(1 not in b for b in run.batches)
    run.release.clear()
    stuck = asyncio.ensure_future(batcher.submit(5))
    await until(lambda: batcher.running == 1)
    queued = asyncio.ensure_future(batcher.submit(6))
    await until(lambda: batcher.depth == 1)
    await batcher.aclose()
    run.release.set()
    for fut in (stuck, queued):
        with pytest.raises(ServiceError) as info:
            await fut
        assert info.value.error_type is ErrorType.NOT_READY


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_queue": 0}, {"max_wait": -1.0}])
def test_invalid_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(Recorder(), name="t", **bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the engine's batched stages
async def test_batched_encode_and_search_equal_unbatched_calls(uniserve_data_dir: Path) -> None:
    """Concurrent requests through the batchers get exactly what one-at-a-time calls get."""
    from service.core.engine import Admission, BatchingConfig, encode_batch
    from service.core.reloader import open_engine
    from service.settings import Settings

    stats: list[BatchStats] = []
    admission = Admission(
        batching=BatchingConfig(max_batch=16, max_wait=0.01), on_batch=stats.append
    )
    engine = open_engine(Settings(data_dir=uniserve_data_dir, bootstrap=False), admission)
    ids = engine.index.item_ids
    surfaces = sorted({s for s in engine.embedder.item_surfaces if s})
    rng = np.random.default_rng(0)
    histories = []
    for n in rng.integers(1, 60, size=40):  # varied lengths, some longer than max_len
        rows = rng.integers(0, len(ids), size=n)
        histories.append(([str(ids[r]) for r in rows], [surfaces[r % len(surfaces)] for r in rows]))
    histories.append(([*histories[0][0][:3], "never-seen-item"], histories[0][1][:4]))

    vectors = await engine.user_vectors(histories)  # (B, D): one job per history, batched
    one_by_one = np.concatenate([engine.embedder.user_vectors([h]) for h in histories])
    np.testing.assert_allclose(vectors, one_by_one, rtol=1e-5, atol=1e-6)
    assert max(s.size for s in stats if s.name == "encode") > 1  # they really were batched

    exclude = [str(i) for i in ids[:5]]
    requests = [  # (k, surfaces, exclude): mixed filters in one burst
        (10, None, ()),
        (5, None, ()),
        (10, [surfaces[0]], ()),
        (7, None, exclude),
        (10, surfaces[:2], exclude),
    ]
    asked = [requests[i % len(requests)] for i in range(len(histories))]
    batched = await asyncio.gather(
        *(
            engine.retrieve(vectors[i], k, Filters.of(surf, excl))
            for i, (k, surf, excl) in enumerate(asked)
        )
    )
    for i, (got_ids, got_scores) in enumerate(batched):
        k, surf, excl = asked[i]
        allowed = engine.allowed_rows(Filters.of(surf, excl))
        s, r = engine.index.search(vectors[i][None], k, allowed=allowed)
        assert got_ids == engine.index.item_ids[r[0][r[0] >= 0]].tolist()
        np.testing.assert_allclose(got_scores, s[0][r[0] >= 0], rtol=1e-6)
        assert len(got_ids) == k
    assert max(s.size for s in stats if s.name == "search") > 1
    assert encode_batch([]) == []
    await admission.aclose()


async def test_a_finished_batch_keeps_nothing_alive_while_the_batcher_waits() -> None:
    class Job:  # stands in for a job holding an engine (a swapped-out one must be freed)
        pass

    batcher: Batcher[Job, int] = Batcher(lambda jobs: [1] * len(jobs), name="t", max_wait=0.0)
    job = Job()
    gone = weakref.ref(job)
    assert await batcher.submit(job) == 1
    del job
    await asyncio.sleep(0)  # the consumer is back waiting for the next item
    assert gone() is None
    await batcher.aclose()


async def test_the_prepared_mask_is_memoised_per_filter_and_delta(uniserve_data_dir: Path) -> None:
    """A search under a live catalogue delta reuses one prepared (counted, packed) mask of the
    index's rows per surface filter until the delta changes; an exclude list is per request."""
    from index.item_index import Eligible
    from service.core.engine import Admission
    from service.core.reloader import open_engine
    from service.settings import Settings
    from service.store.changelog import CatalogueItem, Change

    admission = Admission()
    engine = open_engine(Settings(data_dir=uniserve_data_dir, bootstrap=False), admission)
    ids = engine.index.item_ids.tolist()
    surface = sorted({s for s in engine.index.surfaces.tolist() if s})[0]
    assert engine.allowed_rows(Filters.of(None, ()), engine.delta.hidden_rows) is None
    engine.apply_changes(
        [
            Change(1, "retire", item_ids=tuple(ids[:5])),
            Change(2, "upsert", (CatalogueItem(ids[5], surface, {}),)),
        ]
    )
    hidden = engine.delta.hidden_rows
    assert sorted(hidden.tolist()) == list(range(6))
    plain = engine.allowed_rows(Filters.of(None, ()), hidden)
    assert isinstance(plain, Eligible) and plain.count == len(ids) - 6
    assert not plain.mask[:6].any() and plain.mask[6:].all()
    assert engine.allowed_rows(Filters.of(None, ()), hidden) is plain  # memoised
    on_surface = engine.allowed_rows(Filters.of([surface], ()), hidden)
    assert on_surface is not plain
    expected = engine.index.surface_mask([surface])
    expected[:6] = False
    np.testing.assert_array_equal(on_surface.mask, expected)  # type: ignore[union-attr]
    excluding = engine.allowed_rows(Filters.of(None, [ids[7]]), hidden)
    assert excluding is not engine.allowed_rows(Filters.of(None, [ids[7]]), hidden)
    assert excluding is not None and excluding.count == len(ids) - 7 and not excluding.mask[7]

    queries = engine.embedder.user_vectors([([ids[8], ids[9]], [surface, surface])])  # (1, D)
    for prepared in (plain, on_surface, excluding):
        assert prepared is not None
        by_mask = engine.index.search(queries, 10, allowed=prepared.mask.copy())
        by_prepared = engine.index.search(queries, 10, allowed=prepared)
        np.testing.assert_array_equal(by_mask[1], by_prepared[1])
        assert not np.isin(by_prepared[1], np.arange(6)).any()

    engine.apply_changes([Change(3, "retire", item_ids=(ids[10],))])
    renewed = engine.allowed_rows(Filters.of(None, ()), engine.delta.hidden_rows)
    assert renewed is not plain and renewed is not None and not renewed.mask[10]
    await admission.aclose()
