"""`uniserve bench ablation`: jobs checked before any run, results appended as runs finish, a
failing run recorded without costing the others, `--resume`, and the markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.bench import ablation
from service.cli.main import build_parser


def result(row: str, dataset: str, seed: int, valid: float, **extra: object) -> dict[str, object]:
    return (
        dict(
            row=row,
            dataset=dataset,
            seed=seed,
            base="default",
            valid_ndcg10=valid,
            test_hr10=0.1 + seed / 10,
            test_ndcg10=0.05 + seed / 10,
            best_epoch=3 + seed,
            epochs_run=8,
            seconds=100.0 + seed,
        )
        | extra
    )


def test_finished_runs_again_what_failed_or_was_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "ablation.jsonl"
    lines = [
        json.dumps(result("base", "toys", 0, 0.07)),
        json.dumps(dict(row="base", dataset="toys", seed=1, base="default", error="boom")),
        json.dumps({k: v for k, v in result("dim 128", "toys", 0, 0.07).items() if k != "base"}),
        json.dumps(result("1 layer", "toys", 0, 0.06))[:40],  # the writer killed mid-line
    ]
    path.write_text("\n".join(lines) + "\n")
    assert ablation.finished(path) == {
        ("base", "toys", 0, "default"),
        ("dim 128", "toys", 0, "table"),  # results from before bases were recorded
    }


def test_table_gives_each_seed_the_mean_test_and_what_was_not_run() -> None:
    runs = [
        result("base", "sports", 0, 0.0373),
        result("base", "toys", 0, 0.0687),
        result("base", "toys", 1, 0.0681),
        result("dim 128", "toys", 0, 0.0700),
        dict(row="1 layer", dataset="toys", seed=0, base="default", error="boom"),
    ]
    lines = ablation.table(runs).splitlines()
    assert lines[0].split(" | ")[1:4] == [
        "sports valid NDCG@10 (by seed)",
        "sports test HR@10 / NDCG@10",
        "sports kept / run, s",
    ]
    assert len(lines) == 4  # header, rule, base, dim 128: the failed row has no line
    base = [c.strip() for c in lines[2].strip("|").split("|")]
    assert base[:4] == ["base", "0.0373", "0.1000 / 0.0500", "3/8, 100"]
    assert base[:1] + base[4:] == [
        "base",
        "0.0687, 0.0681",
        "0.1500 / 0.1000",
        "3/8, 100; 4/8, 101",
    ]
    dim = [c.strip() for c in lines[3].strip("|").split("|")]
    assert dim[1:4] == ["not run", "", ""]
    assert dim[4] == "0.0700"


def test_table_names_the_base_when_results_mix_bases() -> None:
    runs = [result("base", "toys", 0, 0.07), result("base", "toys", 0, 0.06, base="table")]
    rows = [line.split("|")[1].strip() for line in ablation.table(runs).splitlines()[2:]]
    assert rows == ["base [default]", "base [table]"]


def test_only_keeps_the_commas_inside_row_names() -> None:
    rows = ablation.split_rows("base,dim 128, 2048 uniform,sampled uniform 256, log-q,3 layers")
    assert rows == ["base", "dim 128, 2048 uniform", "sampled uniform 256, log-q", "3 layers"]
    assert all(row in ablation.ROWS for row in rows)


def test_bad_jobs_stop_the_run_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="unknown rows \\['dim 4096'\\]"):
        ablation.main(["--out", str(out), "--datasets", "sample", "--only", "base,dim 4096"])
    monkeypatch.setitem(ablation.ROWS, "gated post-norm", dict(gated=True, norm="post"))
    with pytest.raises(SystemExit, match=r"row 'gated post-norm' on base 'default': .*pre-norm"):
        ablation.main(["--out", str(out), "--datasets", "sample", "--only", "gated post-norm"])
    with pytest.raises(SystemExit, match=r"dataset 'toys': .*interactions\.parquet not found"):
        ablation.main(["--out", str(out), "--data-root", str(tmp_path), "--datasets", "toys"])
    with pytest.raises(SystemExit, match="dataset 'nowhere'"):
        ablation.main(["--out", str(out), "--datasets", "nowhere"])
    with pytest.raises(SystemExit, match="--seeds"):
        ablation.main(["--out", str(out), "--datasets", "sample", "--seeds", "0,x"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=r"--device cuda: .*sees no CUDA GPU"):
            ablation.main(
                ["--out", str(out), "--datasets", "sample", "--only", "base", "--device", "cuda"]
            )
    assert not out.exists()  # nothing ran, nothing written


def test_runs_record_results_and_errors_and_resume_runs_only_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, broken = tmp_path / "out", tmp_path / "broken"
    broken.mkdir()  # a directory, so the job is made, but no data in it: the run fails
    argv = ["--out", str(out), "--datasets", f"sample,{broken}", "--only", "base", "--seeds", "0"]
    argv += ["--max-steps", "2", "--workers", "2", "--device", "cpu"]
    assert ablation.main(argv) == 0
    runs = ablation.read_results(out / "ablation.jsonl")
    by_dataset = {run["dataset"]: run for run in runs}
    assert sorted(by_dataset) == sorted(["sample", str(broken)])
    assert "FileNotFoundError" in by_dataset[str(broken)]["error"]
    done = by_dataset["sample"]
    assert done["steps"] == 2 and done["base"] == "default" and done["config"] == {"norm": "post"}
    assert 0.0 <= done["test_ndcg10"] <= done["test_hr10"] <= 1.0
    printed = capsys.readouterr().out
    assert "2 runs on 2 workers" in printed and "FAILED: FileNotFoundError" in printed
    assert "| base | " in printed  # the table of the results at the end

    with (out / "ablation.jsonl").open("a") as f:
        f.write('{"row": "base", "dataset": "sam')  # a writer killed mid-line
    assert ablation.main([*argv, "--resume"]) == 0  # the failed run again, not the finished one
    assert "1 runs on 1 workers" in capsys.readouterr().out
    again = ablation.read_results(out / "ablation.jsonl")
    assert len(again) == 3 and again[:2] == runs  # the new result not lost in the cut-off line
    assert again[2]["dataset"] == str(broken) and "error" in again[2]

    assert ablation.main(["--out", str(out), "--table"]) == 0
    assert capsys.readouterr().out == ablation.table(runs)


def test_uniserve_bench_ablation_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        args = build_parser().parse_args(["bench", "ablation", "--help"])
        args.func(args)
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: uniserve bench ablation")
    listed = " ".join(printed.split())  # argparse wraps the list wherever a line fills
    assert all(row in listed for row in ablation.ROWS)  # every row is listed
