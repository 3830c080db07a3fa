"""`models.memory.reuse_freed_memory` against glibc's real allocator: a large block freed and
allocated again is served from kept memory (no new page faults), settings the user gave glibc
are kept, and the CLI's batch jobs are real subcommands. Each check runs in a fresh interpreter,
since the setting is process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli.main import BATCH_JOBS, build_parser

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; other C libraries are left alone"
)

# 20 rounds of a 64 MiB torch tensor (16,384 pages) filled and freed; prints each round's minor
# faults (torch, unlike numpy, asks for no huge pages: every 4 KiB page faults on its own)
PROBE = """
import json, resource, sys
import torch
from models.memory import reuse_freed_memory
taken = reuse_freed_memory() if sys.argv[1] == "tuned" else None
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(1 << 24, dtype=torch.float32)
    block.fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"taken": taken, "faults": faults}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@glibc_only
def test_a_freed_block_is_reused_without_new_page_faults() -> None:
    pages = (1 << 26) // 4096  # one 64 MiB block
    default = probe("default")
    tuned = probe("tuned")
    assert tuned["taken"] is True
    # glibc's default maps every round afresh: each round faults in every page again
    assert min(default["faults"]) >= pages
    # kept for reuse: the heap grows over the first rounds (each freed block is a little too
    # small for the next aligned request until free neighbours merge), then the block is reused
    assert sum(tuned["faults"][10:]) < pages


@glibc_only
def test_settings_the_user_gave_glibc_are_kept() -> None:
    pages = (1 << 26) // 4096
    mine = probe("tuned", MALLOC_MMAP_THRESHOLD_="131072")
    assert mine["taken"] is False
    assert min(mine["faults"]) >= pages  # the user's low threshold still rules
    assert probe("tuned", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["taken"] is False


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    return exit_.value.code


def test_batch_jobs_are_subcommands_and_serve_is_not_one() -> None:
    assert _exit_code(["no-such-job", "--help"]) == 2  # what an unknown command gets
    for command in [*BATCH_JOBS, "serve"]:
        assert _exit_code([command, "--help"]) == 0, command
    assert "serve" not in BATCH_JOBS
