"""Id lookup and history batching (`models/vocab.py`), checked against a per-id, per-row
reference: ragged, empty and over-long histories, unknown ids and surfaces, and ids that are not
str (looked up by their str()). Also: serving user vectors from the held table of item vectors
(`Embedder`) gives the vectors the model's own item encoder gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.embedder import Embedder
from models.holdout import make_cold
from models.item_encoder import FIRST_ITEM_ID, PAD_ID, UNK_ID
from models.train import TrainConfig, build_model
from models.vocab import Vocab, pad_left
from tests.models.test_models import _grouped_corpus

ITEMS = [f"i{i}" for i in range(20)] + ["7"]  # "7": an id an int 7 finds through str()
SURFACES = ["feed", "search", "7"]
PROPERTY = settings(max_examples=60, deadline=None)


def _reference_batch(
    vocab: Vocab, histories: list[tuple[Any, Any]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One history and one id at a time, as written in the plainest way."""
    rows = {x: i for i, x in enumerate(ITEMS)}
    surfaces = {s: i + 1 for i, s in enumerate(SURFACES)}
    t = max([1, *(min(len(items), max_len) for items, _ in histories)])
    ids = torch.full((len(histories), t), PAD_ID, dtype=torch.long)
    surf = torch.zeros((len(histories), t), dtype=torch.long)
    for b, (items, surfs) in enumerate(histories):
        n = min(len(items), max_len)
        for j in range(n):
            row = rows.get(str(items[len(items) - n + j]), -1)
            ids[b, t - n + j] = row + FIRST_ITEM_ID if row >= 0 else UNK_ID
            surf[b, t - n + j] = surfaces.get(str(surfs[len(surfs) - n + j]), 0)
    return ids, surf, ids != PAD_ID


known = st.sampled_from(ITEMS)
ids = st.one_of(known, known, st.just("never-seen"), st.integers(0, 9), known.map(np.str_))
surfaces = st.sampled_from([*SURFACES, "new-surface", 7])
events = st.lists(st.tuples(ids, surfaces), max_size=14)
containers = st.sampled_from(["list", "tuple", "object array", "str array"])


def _container(kind: str, values: list[Any]) -> Any:
    if kind == "tuple":
        return tuple(values)
    if kind == "object array":
        return np.array(values, dtype=object)
    if kind == "str array":  # NumPy str arrays hold str only
        return np.array([str(v) for v in values], dtype=str) if values else np.array([], str)
    return values


@PROPERTY
@given(st.lists(st.tuples(events, containers), max_size=6), st.integers(1, 10))
def test_batch_matches_the_per_row_reference(histories: list[Any], max_len: int) -> None:
    vocab = Vocab(ITEMS, SURFACES)
    batch = [
        (_container(kind, [i for i, _ in ev]), _container(kind, [s for _, s in ev]))
        for ev, kind in histories
    ]
    got = vocab.batch(batch, max_len)
    for g, want in zip(got, _reference_batch(vocab, batch, max_len), strict=True):
        assert g.dtype == want.dtype
        torch.testing.assert_close(g, want, rtol=0, atol=0)


def test_batch_shapes_of_empty_batches() -> None:
    vocab = Vocab(ITEMS, SURFACES)
    for histories, shape in [([], (0, 1)), ([([], []), ([], [])], (2, 1))]:
        ids, surfaces, mask = vocab.batch(histories, 5)
        assert ids.shape == surfaces.shape == mask.shape == shape
        assert not mask.any() and (ids == PAD_ID).all()


def test_item_rows_of_ids_that_are_not_str() -> None:
    vocab = Vocab(ITEMS, SURFACES)
    ids: list[Any] = ["i3", np.str_("i4"), 7, np.int64(7), ["i5"], None, "i999"]
    assert vocab.item_rows(ids).tolist() == [3, 4, 20, 20, -1, -1, -1]
    assert vocab.item_rows(np.array([7, 3])).tolist() == [20, -1]  # int array: "7", "3"
    assert vocab.item_rows(x for x in ["i1", "i2"]).tolist() == [1, 2]  # any iterable
    assert vocab.surface_tokens(["search", 7, "nowhere"]).tolist() == [2, 3, 0]


def test_batch_rejects_fewer_surfaces_than_items() -> None:
    with pytest.raises(ValueError, match="3 items but 2 surfaces"):
        Vocab(ITEMS, SURFACES).batch([(["i1", "i2", "i3"], ["feed", "feed"])], 5)


def test_pad_left_keeps_the_last_events() -> None:
    encoded = [(np.array([5, 6, 7]), np.array([1, 2, 3])), (np.array([], np.int64),) * 2]
    ids, surfaces, mask = pad_left(encoded, 2)
    assert ids.tolist() == [[6, 7], [PAD_ID, PAD_ID]]
    assert surfaces.tolist() == [[2, 3], [0, 0]]
    assert mask.tolist() == [[True, True], [False, False]]


@pytest.mark.parametrize("bias", [False, True])
def test_user_vectors_from_the_held_item_table_match_the_item_encoder(bias: bool) -> None:
    """Once the table of every item vector is held (the service holds it to rank), user
    vectors read history items from it: the same vectors as encoding them, for known,
    unknown and metadata-only (cold) items, padding and empty histories."""
    torch.manual_seed(0)
    corpus = _grouped_corpus()
    cfg = TrainConfig(
        dim=16, max_len=10, content_dim=32, cold_boost=2.0, item_bias=bias, progress=False
    )
    model, spec, vocab = build_model(corpus, cfg)
    make_cold(model, np.arange(0, 500, 7))  # metadata-only rows: boosted channel
    histories = [corpus.test.history.sequence(u) for u in range(40)]
    histories += [(["i3", "never-seen", "i7"], ["s0", "s1", "new-surface"]), ([], [])]
    embedder = Embedder(model.eval(), spec, vocab, {"name": "t"}, "0" * 64)
    encoded = embedder.user_vectors(histories, batch_size=16)
    embedder.item_vectors()
    held = embedder.user_vectors(histories, batch_size=16)
    np.testing.assert_allclose(held, encoded, rtol=0, atol=1e-6)
