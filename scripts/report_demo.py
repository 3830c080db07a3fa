"""A real run for `uniserve report`: serve, scrape, load, render (makes docs/report.png).

    python scripts/report_demo.py [--data-dir .uniserve] [--minutes 4] [--out docs/report.png]

Starts `uniserve serve` (the embedded default over `--data-dir`, bootstrapped when empty) and a
real `prometheus` (temp dir, free loopback ports, 2 s scrapes), then drives phases of load:
fresh users (cache misses) at a rising rate, then returning users (cache hits), with a few
invalid requests, an index reload half-way (a republished version: the cache starts cold again),
and a burst of 300 fresh requests/s offered (queueing shows in the stage timings; 429s when the
queues fill). Finally `service.jobs.report.render` draws the Prometheus
series into `--out`. Needs the `prometheus` binary (Debian: apt-get install prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from index import load_current, republish
from service.bench.servers import free_port
from service.jobs.bootstrap import ensure_artifacts
from service.jobs.report import render
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def wait_ok(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {seconds} s")


async def phase(
    client: httpx.AsyncClient, ids: list[str], *, rate: float, seconds: float, returning: float
) -> None:
    """Open-loop load: `rate` retrieves/s for `seconds`; a `returning` share repeat one of 50
    known users (cache hits), the rest are fresh histories (misses); 1 in 50 is invalid."""
    start = time.monotonic()
    tasks = []
    i = 0
    while (due := start + i / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        rng = secrets.randbelow(10_000)
        if rng % 50 == 0:
            body: dict[str, object] = {"events": [{"item_id": ids[0]}], "k": 0}  # 422
        elif rng / 10_000 < returning:
            user = rng % 50
            body = {"events": [{"item_id": ids[(user * 13 + j) % len(ids)]} for j in range(8)]}
        else:
            picks = [ids[secrets.randbelow(len(ids))] for _ in range(8)]
            body = {"events": [{"item_id": item} for item in picks]}
        body.setdefault("k", 10)
        tasks.append(asyncio.create_task(client.post("/v1/retrieve", json=body)))
        i += 1
    await asyncio.gather(*tasks, return_exceptions=True)


async def drive(url: str, admin_key: str, root: Path, minutes: float) -> None:
    index, _ = load_current(root)
    ids = [str(i) for i in index.item_ids]
    step = minutes * 60 / 6
    limits = httpx.Limits(max_connections=256)  # the burst must reach the server
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await phase(client, ids, rate=10, seconds=step, returning=0.0)
        await phase(client, ids, rate=30, seconds=step, returning=0.3)
        await phase(client, ids, rate=40, seconds=step, returning=0.8)
        republish(root, keep=100)
        reload = await client.post(
            "/admin/reload", headers={"Authorization": f"Bearer {admin_key}"}
        )
        print("reload:", reload.status_code, reload.json().get("index_version"), file=sys.stderr)
        await phase(client, ids, rate=40, seconds=step, returning=0.8)
        await phase(client, ids, rate=300, seconds=step / 3, returning=0.0)  # overload
        await phase(client, ids, rate=20, seconds=step * 5 / 3, returning=0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(".uniserve"))
    p.add_argument("--minutes", type=float, default=4.0, help="length of the load (default 4)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    args = p.parse_args()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("needs the prometheus binary (apt-get install prometheus)", file=sys.stderr)
        return 2
    ensure_artifacts(Settings(data_dir=args.data_dir))
    work = Path(tempfile.mkdtemp(prefix="uniserve-report-"))
    data = work / "data"
    shutil.copytree(args.data_dir, data)
    port, prom_port = free_port(), free_port()
    admin_key = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "UNISERVE_ADMIN_KEY": admin_key,
        "UNISERVE_INDEX_POLL_SECONDS": "0",
        "UNISERVE_BATCH_QUEUE_SIZE": "16",  # a short queue: the burst may be refused (429)
    }
    env.pop("UNISERVE_API_KEY", None)
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
        "scrape_configs:\n"
        f"  - job_name: uniserve\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    procs = []
    try:
        serve = [sys.executable, "-m", "service.cli", "serve", "--no-bootstrap"]
        serve += ["--data-dir", str(data), "--port", str(port), "--log-level", "warning"]
        procs.append(subprocess.Popen(serve, cwd=REPO, env=env))
        procs.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                cwd=work,
            )
        )
        url, prom_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
        wait_ok(f"{url}/readyz", 300)
        wait_ok(f"{prom_url}/-/ready", 60)
        started = time.time()
        time.sleep(10)  # a few idle scrapes first
        asyncio.run(drive(url, admin_key, data / "indexes", args.minutes))
        time.sleep(8)  # the last requests scraped
        out = render(
            prom_url,
            args.out,
            since=time.time() - started,
            step=2.0,
            window="20s",
            title=f"uniserve report: a {args.minutes:g}-minute real run (scripts/report_demo.py)",
        )
        print(out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
