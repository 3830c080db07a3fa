"""Issue 10 options: AutoCDSR, the id-only baseline, backward-compatible training, Matryoshka
dimensions and cold-start item hold-out; each checked against its math and trained on the
shipped sample through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from index import current_version, load_current
from models.artifacts import load_model, read_config
from models.autocdsr import cross_surface_attention_loss, min_norm_weights, pareto_combine
from models.compat import OldModel, compatibility_loss, serves_index_of
from models.data import load_corpus
from models.embedder import Embedder
from models.evaluate import evaluate_within_surface, within_surface_ranks
from models.holdout import hold_out_items
from models.item_encoder import FIRST_ITEM_ID, UNK_ID
from models.matryoshka import parse_dims, truncate, truncate_np
from models.train import TrainConfig, build_model, make_windows
from models.user_encoder import UserEncoder, UserEncoderConfig
from service.cli import main as cli_main
from service.core.engine import Admission, ArtifactMismatchError, check_compatible
from service.core.reloader import open_engine
from service.jobs.bootstrap import ensure_artifacts
from service.jobs.pipeline import build_and_publish
from service.settings import Settings
from tests.helpers import blend_term

SMOKE = ["--data", "sample", "--epochs", "1", "--max-steps", "3", "--quiet", "--batch-size", "32"]


def _train(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert cli_main(["train", *SMOKE, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sample")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("base"), "base")


# --- AutoCDSR ---------------------------------------------------------------------------------


def _encoder() -> UserEncoder:
    torch.manual_seed(0)
    return UserEncoder(UserEncoderConfig(num_surfaces=4, dim=16, num_heads=2, max_len=8)).eval()


def test_forward_with_attention_matches_forward() -> None:
    enc = _encoder()
    x = torch.randn(3, 8, 16)
    surfaces = torch.randint(1, 4, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    with torch.no_grad():
        plain = enc(x, surfaces, mask)
        hidden, probs = enc.forward_with_attention(x, surfaces, mask)
    torch.testing.assert_close(hidden, plain, rtol=1e-5, atol=1e-5)
    assert len(probs) == 2 and probs[0].shape == (3, 2, 8, 8)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(3, 2, 8))
    assert float(probs[0][1].triu(1).abs().max()) == 0.0  # causal: no weight on later events


def test_cross_surface_loss_is_zero_on_one_surface_and_positive_otherwise() -> None:
    enc = _encoder()
    x = torch.randn(2, 8, 16)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :2] = False
    one = torch.full((2, 8), 2)
    mixed = torch.tensor([[1, 2, 1, 2, 3, 1, 2, 3]] * 2)
    with torch.no_grad():
        _, p_one = enc.forward_with_attention(x, one, mask)
        _, p_mixed = enc.forward_with_attention(x, mixed, mask)
    assert float(cross_surface_attention_loss(p_one, one, mask)) == 0.0
    loss = float(cross_surface_attention_loss(p_mixed, mixed, mask))
    # reference: mass on other-surface real keys, averaged over layers, heads, real queries
    ref = []
    for probs in p_mixed:
        for b in range(2):
            for h in range(2):
                for i in range(8):
                    if mask[b, i]:
                        keys = mask[b] & (mixed[b] != mixed[b, i])
                        ref.append(float(probs[b, h, i][keys].sum()))
    assert 0.0 < loss < 1.0
    assert loss == pytest.approx(np.mean(ref), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_min_norm_weights_match_the_closed_form_and_minimise_the_norm(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(50, generator=g), torch.randn(50, generator=g) * (seed + 1) / 3
    a, b = min_norm_weights(g1, g2)
    assert 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 and a + b == pytest.approx(1.0)
    closed = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    assert a == pytest.approx(min(1.0, max(0.0, closed)), abs=1e-6)
    grid = torch.linspace(0, 1, 1001)
    norms = torch.stack([(t * g1 + (1 - t) * g2).norm() for t in grid])
    assert float((a * g1 + b * g2).norm()) <= float(norms.min()) + 1e-4


def test_min_norm_weights_clip_and_degenerate_cases() -> None:
    g = torch.tensor([1.0, 2.0])
    assert min_norm_weights(g, g) == (0.5, 0.5)
    assert min_norm_weights(g, 3 * g) == (1.0, 0.0)  # the smaller gradient alone
    assert min_norm_weights(3 * g, g) == (0.0, 1.0)
    assert min_norm_weights(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == (0.5, 0.5)


def test_pareto_combine_uses_the_min_norm_weights() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    rec, aux = (w**2).sum(), (w * torch.tensor([3.0, 0.5])).sum()
    loss, (w_rec, w_aux) = pareto_combine(rec, aux, [w])
    a, b = min_norm_weights(2 * w.detach(), torch.tensor([3.0, 0.5]))
    assert (w_rec, w_aux) == pytest.approx((a, b))
    assert loss.item() == pytest.approx(rec.item() + b / a * aux.item())


def test_pareto_combine_normalisations() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    rec, aux = (w**2).sum(), 0.1 * (w * torch.tensor([3.0, 0.5])).sum()
    _, weights = pareto_combine(rec, aux, [w], normalize="l2")
    assert weights == pytest.approx((0.5, 0.5))  # unit gradients: the midpoint
    _, weights = pareto_combine(rec, aux, [w], normalize="loss")
    g_rec, g_aux = 2 * w.detach() / rec.item(), 0.1 * torch.tensor([3.0, 0.5]) / aux.item()
    assert weights == pytest.approx(min_norm_weights(g_rec, g_aux))
    with pytest.raises(ValueError, match="normalize"):
        pareto_combine(rec, aux, [w], normalize="max")


def test_autocdsr_training_runs_and_records_the_weights(tmp_path: Path) -> None:
    out = _train(tmp_path, "autocdsr", "--autocdsr", "--mgda-normalize", "loss")
    training = read_config(out)["training"]
    assert training["config"]["autocdsr"] is True
    assert 0.0 <= training["mgda_rec_weight_mean"] <= 1.0


# --- id-only baseline -------------------------------------------------------------------------


def test_id_only_model_ignores_surfaces_and_metadata(tmp_path: Path, corpus) -> None:
    out = _train(tmp_path, "idonly", "--id-only")
    model, _, vocab, config = load_model(out)
    assert config["model"]["user"]["surface_tokens"] is False
    assert config["model"]["item"]["metadata"] is False
    ids, surfaces, mask = vocab.batch([corpus.test.history.sequence(i) for i in range(4)], 50)
    with torch.no_grad():
        a = model.user_vectors(ids, surfaces, mask)
        b = model.user_vectors(ids, torch.zeros_like(surfaces), mask)
        unk = model.item_vectors(torch.tensor([UNK_ID]))
        cat = torch.randint(1, 3, (1, model.item_cat.shape[1]))
        meta = model.finish_item_vectors(
            model.item_encoder(torch.tensor([UNK_ID]), cat, model.item_tokens[:1])
        )
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(unk, meta)  # a cold item is the UNK vector, whatever its metadata


# --- backward-compatible training -------------------------------------------------------------


def test_compatibility_loss_is_zero_when_the_new_model_equals_the_old(
    base_model: Path, corpus
) -> None:
    model, _, vocab, _ = load_model(base_model)
    old = OldModel.load(base_model, vocab)
    win_ids, win_surf = make_windows(corpus.train, vocab, 50)
    ids, surfaces = torch.from_numpy(win_ids[:16, :-1]), torch.from_numpy(win_surf[:16, :-1])
    targets = torch.from_numpy(win_ids[:16, 1:])
    mask = ids != 0
    keep = mask & (targets >= FIRST_ITEM_ID)
    negatives = torch.arange(FIRST_ITEM_ID, FIRST_ITEM_ID + 64)
    log_q = torch.zeros(len(vocab) + FIRST_ITEM_ID)
    with torch.no_grad():
        new_q = model.query_vectors(model.hidden(ids, surfaces, mask))[keep]
        old_q = old.queries(ids, surfaces, mask)[keep]
    args = (old, targets[keep], negatives, log_q, 0.1)
    assert float(compatibility_loss(new_q, old_q, *args)) == 0.0
    torch.manual_seed(1)
    other, _, _ = build_model(corpus, TrainConfig())
    with torch.no_grad():
        other_q = other.eval().query_vectors(other.hidden(ids, surfaces, mask))[keep]
    assert float(compatibility_loss(other_q, old_q, *args)) > 0.0


def test_compatible_model_serves_the_old_index(tmp_path: Path, base_model: Path) -> None:
    new = _train(tmp_path, "new", "--compatible-with", str(base_model), "--seed", "1")
    config = read_config(new)
    old_fp = Embedder.from_dir(base_model).fingerprint
    assert config["compatible_with"]["fingerprint"] == old_fp
    root = tmp_path / "index"
    build_and_publish(base_model, root, index_type="Flat")
    index, manifest = load_current(root)
    new_embedder = Embedder.from_dir(new)
    assert serves_index_of(new_embedder.config, new_embedder.fingerprint, old_fp)
    check_compatible(new_embedder, index, manifest)  # accepted: no rebuild needed
    unrelated = Embedder.from_dir(_train(tmp_path, "unrelated", "--seed", "2"))
    with pytest.raises(ArtifactMismatchError):
        check_compatible(unrelated, index, manifest)

    # the service, configured with the new model, starts on the old index without a rebuild
    settings = Settings(data_dir=tmp_path / "data", model_dir=new, index_root=root)
    ensure_artifacts(settings)
    assert current_version(root) == manifest.version  # nothing rebuilt
    engine = open_engine(settings, Admission())
    assert engine.embedder.fingerprint == new_embedder.fingerprint
    assert engine.manifest.model_fingerprint == old_fp


# --- Matryoshka -------------------------------------------------------------------------------


def test_parse_dims_and_truncate() -> None:
    assert parse_dims("32,16,32") == (16, 32)
    with pytest.raises(ValueError, match="x"):
        parse_dims("16,x")
    v = torch.randn(5, 8)
    torch.testing.assert_close(truncate(v, 3).norm(dim=-1), torch.ones(5))
    np.testing.assert_allclose(truncate_np(v.numpy(), 3), truncate(v, 3).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="matryoshka"):
        TrainConfig(matryoshka=(16,), item_bias=True)


def test_matryoshka_prefixes_are_valid_embeddings_used_by_index_build(tmp_path: Path) -> None:
    out = _train(tmp_path, "mrl", "--matryoshka", "16,32")
    embedder = Embedder.from_dir(out)
    items = embedder.item_vectors()
    for dim in (16, 32):
        prefix = truncate_np(items, dim)
        assert prefix.shape == (len(items), dim) and np.isfinite(prefix).all()
        np.testing.assert_allclose(np.linalg.norm(prefix, axis=1), 1.0, rtol=1e-5)
    manifest = build_and_publish(out, tmp_path / "index16", index_type="Flat", dim=16)
    index, loaded = load_current(tmp_path / "index16")
    assert manifest.dim == loaded.dim == index.dim == 16
    assert manifest.extra["matryoshka_dim"] == 16 and manifest.extra["model_dim"] == 64
    assert (manifest.recall_at_10 or 0.0) >= 0.95


@pytest.mark.anyio
async def test_service_serves_a_matryoshka_prefix_index(tmp_path: Path, serve) -> None:
    """A `build-index --dim 16` version is served: queries are cut to the same prefix, so the
    scores are the re-normalised 16-dim inner products (plus the blend's term of the history,
    as at full dimension); a prefix the model lacks is refused."""
    out = _train(tmp_path, "mrl", "--matryoshka", "16,32")
    root = tmp_path / "index16"
    build_and_publish(out, root, index_type="Flat", dim=16)
    settings = Settings(data_dir=tmp_path / "data", model_dir=out, index_root=root, bootstrap=False)
    embedder = Embedder.from_dir(out)
    events = [{"item_id": str(i)} for i in embedder.item_ids[:6]]
    async with serve(settings) as served:
        engine = served.state.engine
        assert engine is not None and engine.index_dim == 16 and engine.dim == 64
        user = (await served.client.post("/v1/users/embed", json={"events": events})).json()
        resp = await served.client.post("/v1/retrieve", json={"events": events, "k": 5})
        assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    assert len(items) == 5
    query = truncate_np(np.asarray([user["embedding"]], np.float32), 16)[0]  # (16,)
    table = truncate_np(embedder.item_vectors(), 16)  # (N, 16)
    ids = [str(i) for i in embedder.item_ids]
    served = table @ query + blend_term(embedder, ids, [e["item_id"] for e in events])  # (N,)
    rows = embedder.item_rows([it["item_id"] for it in items])
    np.testing.assert_allclose([it["score"] for it in items], served[rows], rtol=1e-4, atol=1e-4)
    assert items[0]["score"] == pytest.approx(float(served.max()), abs=1e-4)

    # an index claiming a prefix wider than the model's vectors is refused
    index, manifest = load_current(root)
    manifest.extra["matryoshka_dim"] = 128
    with pytest.raises(ArtifactMismatchError, match="prefix 128"):
        check_compatible(embedder, index, manifest)


def test_evaluate_cli_protocol_json_and_prefix_dim(base_model: Path, capsys) -> None:
    capsys.readouterr()
    args = ["evaluate", "--model", str(base_model), "--dataset", "sample", "--json"]
    assert cli_main([*args, "--protocol", "sampled100", "--dim", "32", "--by-surface"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dim"] == 32
    assert set(report["metrics"]["model"]["all"]) == {"n", "sampled"}
    assert "within_surface" not in report  # full ranking within surfaces: not with sampled100
    by_surface = report["sampled_by_target_surface"]
    assert sum(v["n"] for k, v in by_surface.items() if k != "all") == by_surface["all"]["n"]
    # the sampled-only path agrees with the full evaluation's sampled numbers
    assert cli_main([*args, "--dim", "32", "--no-baseline"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert "most_popular" not in both["metrics"]
    assert both["metrics"]["model"]["all"]["sampled"] == pytest.approx(
        report["metrics"]["model"]["all"]["sampled"]
    )
    assert cli_main([*args, "--item-model", str(base_model), "--protocol", "sampled100"]) == 0
    same = json.loads(capsys.readouterr().out)  # the model against its own items (no blend)
    assert cli_main([*args, "--protocol", "sampled100", "--no-blend"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["model"] == same["metrics"]["model"]


# --- cold-start hold-out ----------------------------------------------------------------------


def test_holdout_removes_items_from_training(corpus) -> None:
    trimmed, held = hold_out_items(corpus, 0.1, seed=0)
    assert len(held) == round(0.1 * len(corpus.items))
    assert not np.isin(trimmed.train.item_id.astype(str), held).any()
    assert len(trimmed.items) == len(corpus.items)
    assert len(trimmed.train.item_id) < len(corpus.train.item_id)


def test_holdout_training_serves_cold_items_from_metadata(tmp_path: Path, corpus) -> None:
    out = _train(tmp_path, "cold", "--holdout-items", "0.1")
    model, _, vocab, config = load_model(out)
    cold = config["training"]["cold_items"]
    assert len(cold) == round(0.1 * len(corpus.items))
    rows = torch.from_numpy(vocab.item_rows(cold) + FIRST_ITEM_ID)
    table = model.item_encoder.id_embedding.weight
    torch.testing.assert_close(table[rows], table[UNK_ID].expand(len(rows), -1))
    within = config["within_surface"]["model"]
    assert {"warm", "cold", "all"} <= set(within)
    assert within["warm"]["n"] + within["cold"]["n"] == within["all"]["n"]


def test_within_surface_ranks_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 10))
    item_surfaces = np.array(list("aabbbabbab"), dtype=object)
    rows = np.array([0, 2, 5, 9, -1, 3])
    target_surfaces = np.array(list("abbaab"), dtype=object)
    ranks = within_surface_ranks(lambda idx: scores[idx], rows, target_surfaces, item_surfaces)
    for u in range(6):
        r, s = rows[u], target_surfaces[u]
        if r < 0 or item_surfaces[r] != s:
            assert ranks[u] == np.inf
        else:
            same = item_surfaces == s
            assert ranks[u] == (scores[u][same] >= scores[u, r]).sum() - 1


def test_evaluate_within_surface_popularity_groups(corpus) -> None:
    _, _, vocab = build_model(corpus, TrainConfig())
    pop = np.arange(len(vocab), dtype=np.float64)
    res = evaluate_within_surface(
        None, vocab, corpus.items.surface.astype(str), corpus.test, popularity=pop
    )
    assert res["all"]["n"] == len(corpus.test)
    assert sum(v["n"] for k, v in res.items() if k.startswith("surface=")) == len(corpus.test)
