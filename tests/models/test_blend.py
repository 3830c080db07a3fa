"""The served blend (`models.blend`): one history's sparse co-occurrence scores equal the
batch scores; counting both ways adds each pair in reverse, and the blend counts both ways only
when validation prefers it; the beta chosen on validation is the best one, each beta's NDCG@10
equal to evaluating that blend through the evaluation's own path; the file round-trips, is part
of the model fingerprint and is refused when it does not fit the model."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifacts import ModelArtifactError, load_blend, model_fingerprint, save_model
from models.blend import BETAS, NEIGHBOURS_FILE, Blend, ItemNeighbours
from models.corpus import Sequences
from models.evaluate import choose_beta, evaluate_model
from models.train import TrainConfig, train
from models.vocab import Vocab
from service.jobs.pipeline import choose_blend, train_to_dir
from tests.helpers import ring_corpus


def test_one_history_scores_equal_the_batch_scores() -> None:
    corpus = ring_corpus()
    vocab = Vocab(corpus.items.item_id, [])
    table = ItemNeighbours.fit(corpus.train, vocab, window=3, last=4, decay=0.6)
    histories = corpus.test.history
    idx = np.arange(len(histories))
    dense = table.batch_scores(histories, vocab, idx).numpy()  # (U, N)
    for u in idx:
        items = [str(x) for x in histories.sequence(int(u))[0]]
        rows, c = table.sparse_scores(table.recent_rows(vocab, items))
        assert np.all(np.diff(rows) > 0) and np.all(c > 0)
        expected = np.flatnonzero(dense[u])
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(c, dense[u][expected], rtol=1e-6)
    # unknown ids keep their age; an empty history has no neighbours
    rows, c = table.sparse_scores(table.recent_rows(vocab, ["i3", "nope", "i5"]))
    only_i5 = table.sparse_scores(table.recent_rows(vocab, ["i5"]))
    i3 = table.sparse_scores(table.recent_rows(vocab, ["i3"]))
    expected = {int(r): float(v) for r, v in zip(*only_i5, strict=True)}
    for r, v in zip(*i3, strict=True):
        expected[int(r)] = expected.get(int(r), 0.0) + 0.6**2 * float(v)
    assert dict(zip(rows.tolist(), c.tolist(), strict=True)) == pytest.approx(expected)
    assert table.sparse_scores(table.recent_rows(vocab, []))[0].size == 0


@pytest.fixture(scope="module")
def ring_model():
    corpus = ring_corpus()
    cfg = TrainConfig(dim=16, epochs=2, batch_size=32, progress=False, blend=False)
    return corpus, train(corpus, cfg)


def test_choose_beta_picks_the_best_validation_ndcg(ring_model) -> None:
    corpus, result = ring_model
    table = ItemNeighbours.fit(corpus.train, result.vocab, window=2, last=2, decay=0.5)
    betas = (0.0, 0.05, 0.5, 5.0)
    beta, tried, z = choose_beta(
        result.model, result.vocab, corpus.valid, table, betas, batch_size=7
    )
    assert set(tried) == {"0", "0.05", "0.5", "5"}
    assert tried[f"{beta:g}"] == max(tried.values())
    for b in betas:  # the one-pass ranking equals evaluating that blend the usual way
        blend = Blend(table, b) if b else None
        report = evaluate_model(result.model, result.vocab, corpus.valid, blend=blend)
        assert tried[f"{b:g}"] == round(report["all"]["full_seen_removed"]["ndcg@10"], 5)
    # the ring's next item is its co-occurrence neighbour: a weak model gains from the blend
    assert beta > 0 and tried[f"{beta:g}"] > tried["0"] and z > 2

    # counts of random walks say nothing about the ring: no gain beyond noise, the model alone
    rng = np.random.default_rng(3)
    walks = [[f"i{j}" for j in rng.integers(0, 40, 8)] for _ in range(200)]
    noise = ItemNeighbours.fit(
        Sequences.from_lists([f"r{u}" for u in range(200)], walks, [[""] * 8] * 200),
        result.vocab,
        window=2,
        last=2,
        decay=0.5,
    )
    beta, tried, z = choose_beta(result.model, result.vocab, corpus.valid, noise, betas)
    assert beta == 0.0 and z <= 2, (tried, z)


def test_two_way_counts_add_each_pair_in_reverse_with_its_weight() -> None:
    train = Sequences.from_lists(["u0", "u1"], [["a", "b", "c"], ["c", "a"]], [[""] * 3, [""] * 2])
    vocab = Vocab(np.array(["a", "b", "c", "d"], dtype=object), [])

    def pairs(table: ItemNeighbours) -> dict[tuple[str, str], float]:
        names = "abcd"
        return {
            (names[a], names[int(b)]): float(w)
            for a in range(table.items)
            for b, w in zip(
                table.indices[table.indptr[a] : table.indptr[a + 1]],
                table.weights[table.indptr[a] : table.indptr[a + 1]],
                strict=True,
            )
        }

    one = ItemNeighbours.fit(train, vocab, window=2, last=1, decay=1.0)
    assert pairs(one) == {("a", "b"): 1.0, ("b", "c"): 1.0, ("a", "c"): 0.5, ("c", "a"): 1.0}
    both = ItemNeighbours.fit(train, vocab, window=2, last=1, decay=1.0, two_way=True)
    assert both.two_way and not one.two_way
    expected = {("a", "b"): 1.0, ("b", "a"): 1.0, ("b", "c"): 1.0, ("c", "b"): 1.0}
    expected |= {("a", "c"): 0.5 + 1.0, ("c", "a"): 1.0 + 0.5}  # a..c at gap 2, then c -> a
    assert pairs(both) == expected


def test_the_blend_counts_both_ways_only_when_validation_prefers_it(ring_model) -> None:
    corpus, result = ring_model
    blend, _, info = choose_blend(result.model, result.vocab, corpus)
    ways = info["cooccurrence_valid_ndcg@10_by_way"]
    assert blend is not None and not blend.neighbours.two_way and info["two_way"] is False
    assert ways["one_way"] >= ways["two_way"]  # the ring runs one way: the reverse adds noise
    # the same users walking the ring backwards in training: one way, the counts point back
    train = corpus.train
    walks = [list(train.sequence(u)[0])[::-1] for u in range(len(train))]
    backwards = replace(
        corpus,
        train=Sequences.from_lists(
            [str(u) for u in train.user_id], walks, [[""] * len(w) for w in walks]
        ),
    )
    blend, _, info = choose_blend(result.model, result.vocab, backwards)
    ways = info["cooccurrence_valid_ndcg@10_by_way"]
    assert blend is not None and blend.neighbours.two_way and info["two_way"] is True
    assert ways["two_way"] > ways["one_way"]


def test_blend_file_round_trips_and_belongs_to_its_model(ring_model, tmp_path: Path) -> None:
    corpus, result = ring_model
    blend, _, info = choose_blend(result.model, result.vocab, corpus)
    assert blend is not None and info["beta"] == blend.beta > 0
    save = (result.model, result.spec, result.vocab, corpus.items)
    plain = save_model(*save, tmp_path / "plain", name="ring")
    blended = save_model(*save, tmp_path / "blended", name="ring", blend=blend)
    assert not (tmp_path / "plain" / NEIGHBOURS_FILE).exists()
    assert blended != plain  # the table and beta are part of what is served
    loaded = load_blend(tmp_path / "blended", len(result.vocab))
    assert loaded is not None and loaded.beta == blend.beta
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(
            getattr(loaded.neighbours, name), getattr(blend.neighbours, name)
        )
    assert (loaded.neighbours.window, loaded.neighbours.last, loaded.neighbours.decay) == (
        blend.neighbours.window,
        blend.neighbours.last,
        blend.neighbours.decay,
    )
    (tmp_path / "both").mkdir()
    Blend(replace(blend.neighbours, two_way=True), blend.beta).save(tmp_path / "both")
    both = load_blend(tmp_path / "both", len(result.vocab))
    assert both is not None and both.neighbours.two_way
    # saving again without a blend removes the file (and so changes the fingerprint back)
    assert save_model(*save, tmp_path / "blended", name="ring") == plain
    assert load_blend(tmp_path / "blended", len(result.vocab)) is None

    other = tmp_path / "other"
    shutil.copytree(tmp_path / "plain", other)
    blend.save(other)
    with pytest.raises(ModelArtifactError, match="the model has 39"):
        load_blend(other, len(result.vocab) - 1)  # a table for another catalogue
    (other / NEIGHBOURS_FILE).write_bytes(b"\x80\x04not a table")  # a pickle's first bytes
    with pytest.raises(ModelArtifactError, match="not a valid neighbours file"):
        load_blend(other, len(result.vocab))
    with pytest.raises(ValueError, match="beta"):
        Blend(blend.neighbours, 0.0)
    assert model_fingerprint(other) != model_fingerprint(tmp_path / "plain")


def test_blended_scores_are_the_model_scores_plus_the_term(ring_model) -> None:
    corpus, result = ring_model
    table = ItemNeighbours.fit(corpus.train, result.vocab, window=2, last=2, decay=0.5)
    alone = evaluate_model(result.model, result.vocab, corpus.test)
    huge = evaluate_model(result.model, result.vocab, corpus.test, blend=Blend(table, 1e6))
    # with a huge beta the co-occurrence term decides: the ring's next item is first
    assert huge["all"]["full_seen_removed"]["recall@10"] > 0.9
    assert (
        huge["all"]["full_seen_removed"]["ndcg@10"] > alone["all"]["full_seen_removed"]["ndcg@10"]
    )
    term = Blend(table, 2.0).bonus(torch.tensor([0.0, np.e - 1]))
    np.testing.assert_allclose(term.numpy(), [0.0, 2.0], rtol=1e-6)


def test_train_to_dir_saves_the_chosen_blend_unless_told_not_to(tmp_path: Path) -> None:
    corpus = ring_corpus()
    cfg = TrainConfig(dim=16, epochs=2, batch_size=32, progress=False)
    report = train_to_dir(corpus, cfg, tmp_path / "blended", evaluate=False)
    chosen = report["blend"]
    assert set(chosen["valid_ndcg@10_by_beta"]) == {f"{b:g}" for b in BETAS}
    assert chosen["beta"] > 0 and (tmp_path / "blended" / NEIGHBOURS_FILE).is_file()
    cfg.blend = False
    report = train_to_dir(corpus, cfg, tmp_path / "alone", evaluate=False)
    assert "blend" not in report and not (tmp_path / "alone" / NEIGHBOURS_FILE).exists()
