"""The open-loop load: a raw HTTP/1.1 keep-alive client, one rate step (latency from each
request's scheduled send time, outcomes counted per status), the ladder of steps with a drain
after each, and the overload and cache-hit phases. Each phase takes a started `Server` and sends
its bodies on that server's wire to its retrieve path (`Server.bodies`, `Server.path`)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from service.bench.artifacts import BodyStream
from service.bench.servers import Server

T = TypeVar("T")

P99_BOUND_MS = 50.0
IDLE_REUSE_S = 3.0  # keep-alive connections idle longer are not reused (uvicorn closes at 5 s)
TIMEOUT_S = 10.0  # a request unanswered this long counts as an error (status TIMED_OUT)
DRAIN_S = 30.0  # after a step, wait up to this long for the server to answer fast again
FAILED, TIMED_OUT = -1, -2  # `Client.post` statuses with no HTTP status: a reset, a timeout


# ------------------------------------------------------------------------------ load
@dataclass
class StepResult:
    target_rps: float
    achieved_rps: float
    sent: int
    ok: int
    rejected: int  # 429
    errors: int  # anything else: other statuses, resets, timeouts
    p50_ms: float
    p95_ms: float
    p99_ms: float
    reject_p99_ms: float  # 429 latency from the actual send, not the schedule
    # requests per outcome: HTTP status ("200", "429", "503"...), "timeout" (no answer in
    # TIMEOUT_S), "failed" (connection refused or reset)
    statuses: dict[str, int] = field(default_factory=dict)
    # CPU the service's processes used during the step, in cores (CPU seconds / wall seconds);
    # None where not measured. One process near 1.0 is bound by its interpreter lock
    cpu_cores: float | None = None

    def sustained(self) -> bool:
        return (
            self.errors == 0 and self.rejected <= 0.001 * self.sent and self.p99_ms <= P99_BOUND_MS
        )


class Client:
    """Raw HTTP/1.1 keep-alive connections to one port; a pool grows as the load needs."""

    def __init__(self, port: int, max_connections: int = 512) -> None:
        self.port = port
        self.max_connections = max_connections
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open = 0

    async def post(self, path: str, body: bytes, timeout: float = TIMEOUT_S) -> int:
        """The answer's HTTP status, TIMED_OUT, or FAILED (refused, reset, malformed)."""
        now = time.monotonic()
        while self.idle and now - self.idle[-1][2] > IDLE_REUSE_S:  # the server may close it
            self.idle.pop()[1].close()
            self.open -= 1
        if self.idle:
            reader, writer, _ = self.idle.pop()
            conn = (reader, writer)
        else:
            self.open += 1
            try:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                return FAILED
        reader, writer = conn
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
            )
            status, close = await asyncio.wait_for(self._read(reader), timeout)
        except TimeoutError:
            writer.close()
            self.open -= 1
            return TIMED_OUT
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            self.open -= 1
            return FAILED
        if close:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bool]:
        """(status, whether the server closes the connection); the body is read and dropped,
        whether sized by Content-Length or sent in chunks (Ray Serve's proxy streams)."""
        status = int((await reader.readline()).split()[1])
        length, close, chunked = 0, False, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            await reader.readexactly(length)
            return status, close
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)  # the chunk and its CRLF
        while await reader.readline() not in (b"\r\n", b""):  # trailers, then the blank line
            pass
        return status, close

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def run_step(
    client: Client,
    bodies: Sequence[bytes],
    rate: float,
    seconds: float,
    path: str = "/v1/retrieve",
    keep: list[float] | None = None,
) -> StepResult:
    """Open loop: request i is due at start + i / rate; latency counts from when it was due.
    Request i POSTs `bodies[i]` to `path` (cycling when there are fewer bodies than requests).
    `keep`, when given, receives every answered (200) request's latency in ms, for pooling
    several steps."""
    n = max(1, int(rate * seconds))
    latencies = np.full(n, np.nan)
    statuses = np.zeros(n, dtype=np.int64)
    reject_latency: list[float] = []
    clock = time.perf_counter  # not loop.time(): uvloop's advances in whole milliseconds
    start = clock() + 0.05

    async def one(i: int) -> None:
        due = start + i / rate
        sent = clock()
        status = await client.post(path, bodies[i % len(bodies)])
        done = clock()
        statuses[i] = status
        latencies[i] = done - due
        if status == 429:
            reject_latency.append(done - sent)

    # No collector passes in the client while it times requests: one over the step's tasks
    # stopped it for up to 78 ms (measured), then it sent the overdue requests in one burst.
    gc.disable()
    try:
        tasks = []
        for i in range(n):
            delay = start + i / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        elapsed = clock() - start
    finally:
        gc.enable()
    ok = int((statuses == 200).sum())
    rejected = int((statuses == 429).sum())
    names = {FAILED: "failed", TIMED_OUT: "timeout"}
    codes, counts = np.unique(statuses, return_counts=True)
    ms = 1000 * latencies
    if keep is not None:
        keep.extend(ms[statuses == 200].tolist())
    return StepResult(
        target_rps=rate,
        achieved_rps=ok / elapsed,
        sent=n,
        ok=ok,
        rejected=rejected,
        errors=n - ok - rejected,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        reject_p99_ms=float(np.percentile(reject_latency, 99) * 1000) if reject_latency else 0.0,
        statuses={names.get(int(c), str(c)): int(n) for c, n in zip(codes, counts, strict=True)},
    )


def run_load(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load-generating coroutine to completion, on uvloop when it is installed (the client
    then takes less of the cores it shares with the server under test).

    First the garbage collector collects what earlier phases left (the in-process limit's model
    and index) and freezes everything alive: a full collection in the client over those objects
    stopped it for about 100 ms (measured), after which it sent the overdue requests in one
    burst, and the burst, not the server, made the latency and 429s of that moment (`run_step`
    also keeps the collector off while it times requests)."""
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def step_count(rate: float, seconds: float) -> int:
    """Requests one step of `rate` for `seconds` sends."""
    return max(1, int(rate * seconds))


async def _warm_up(client: Client, srv: Server, source: BodyStream) -> None:
    """Open connections and warm the server's caches of code paths (not of results)."""
    await run_step(client, srv.bodies(source.take(20)), 20.0, 1.0, srv.path)


async def drain(client: Client, srv: Server, probes: BodyStream) -> None:
    """Wait until the server answers a lone request within the bound again (or DRAIN_S pass):
    a service with no bound on its queue is still working off the requests of a step it could
    not keep up with, and the next step would be measured on top of that backlog. `probes` is
    a stream of its own (fresh histories: no cache hit answers early), so the steps' bodies are
    the same for every service whatever the drains took."""
    await asyncio.sleep(0.5)
    deadline = time.perf_counter() + DRAIN_S
    while time.perf_counter() < deadline:
        (body,) = srv.bodies(probes.take(1))
        sent = time.perf_counter()
        status = await client.post(srv.path, body)
        if status == 200 and time.perf_counter() - sent <= P99_BOUND_MS / 1000:
            return
        await asyncio.sleep(0.2)


def fixed_rates(rates: Sequence[float]) -> Generator[float, bool, None]:
    """Each rate in turn, until one's verdict is False."""
    for rate in rates:
        if not (yield rate):
            return


async def run_rates(
    srv: Server,
    source: BodyStream,
    seconds: float,
    label: str,
    rates: Generator[float, bool, None],
    verdict: Callable[[StepResult], bool],
) -> list[StepResult]:
    """One step per rate `rates` yields (fresh bodies each), sending it each step's verdict.
    Returns every step run, in order."""
    client = Client(srv.port)
    results: list[StepResult] = []
    probes = source.probes()
    try:
        await _warm_up(client, srv, source)
        rate = next(rates, None)
        while rate is not None:
            bodies = srv.bodies(source.take(step_count(rate, seconds)))
            cpu, wall = srv.cpu_seconds(), time.perf_counter()
            step = await run_step(client, bodies, rate, seconds, srv.path)
            cores = (srv.cpu_seconds() - cpu) / (time.perf_counter() - wall)
            step = replace(step, cpu_cores=round(cores, 3))
            results.append(step)
            print(format_step(label, step), flush=True)
            await drain(client, srv, probes)
            try:
                rate = rates.send(verdict(step))
            except StopIteration:
                rate = None
    finally:
        client.close()
    return results


async def ladder(
    srv: Server, source: BodyStream, rates: Sequence[float], seconds: float, label: str
) -> list[StepResult]:
    """Each rate in turn; stops after the first rate whose p99 passes 4x the bound."""

    def bounded(step: StepResult) -> bool:
        return step.p99_ms <= 4 * P99_BOUND_MS

    return await run_rates(srv, source, seconds, label, fixed_rates(rates), bounded)


@dataclass(frozen=True)
class KneeSearch:
    """How `find_knee` climbs: `start` req/s times `growth` per rung until a rung is not
    sustained (p99 over the bound, 429s over 0.1%, or any error) or passes `cap`, then
    `refine` bisections between the last sustained and the first failed rate."""

    start: float = 50.0
    growth: float = 1.5
    refine: int = 4
    cap: float = 10_000.0


def knee_rates(search: KneeSearch) -> Generator[float, bool, None]:
    """The rates `find_knee` tries, in order: send each rate's verdict (sustained or not) to get
    the next. Climbs from `search.start` by `search.growth` until a rate fails or the next would
    pass `search.cap`, then bisects `search.refine` times between the last good and the first
    bad rate (stopping early once they are within 1 req/s)."""
    good, bad = 0.0, None
    rate = search.start
    while rate <= search.cap:
        if not (yield rate):
            bad = rate
            break
        good, rate = rate, rate * search.growth
    if bad is None:
        return  # sustained up to the cap: no knee below it
    for _ in range(search.refine):
        mid = (good + bad) / 2
        if mid - good < 1.0:
            return
        if (yield mid):
            good = mid
        else:
            bad = mid


async def find_knee(
    srv: Server, source: BodyStream, seconds: float, label: str, search: KneeSearch
) -> list[StepResult]:
    """The service's own maximum sustainable rate: the steps of `knee_rates`. Returns every step
    run, in order (the best sustained one is `best_rate` of them)."""
    return await run_rates(srv, source, seconds, label, knee_rates(search), StepResult.sustained)


def format_step(label: str, s: StepResult) -> str:
    return (
        f"{label:9s} target {s.target_rps:7.0f}/s achieved {s.achieved_rps:7.1f}/s  "
        f"p50 {s.p50_ms:7.1f}  p95 {s.p95_ms:7.1f}  p99 {s.p99_ms:8.1f} ms  "
        f"429 {s.rejected:5d}  errors {s.errors:4d}"
        + (f"  cpu {s.cpu_cores:4.2f} cores" if s.cpu_cores is not None else "")
        + ("  ok" if s.sustained() else "")
        + (f"  {other}" if (other := _other_statuses(s)) else "")
    )


def _other_statuses(s: StepResult) -> str:
    """What the errors were: every outcome but 200 and 429, e.g. "503 12, timeout 40"."""
    return ", ".join(f"{k} {n}" for k, n in s.statuses.items() if k not in ("200", "429"))


def best_rate(steps: Sequence[StepResult]) -> StepResult | None:
    ok = [s for s in steps if s.sustained()]
    return max(ok, key=lambda s: s.achieved_rps) if ok else None


async def overload(
    srv: Server, source: BodyStream, sustainable: float, seconds: float
) -> dict[str, Any]:
    """2x the sustainable rate, then half of it: how it refuses (429s and their latency) or
    queues (latency, timeouts), its RSS, and whether it recovers; fresh bodies (no cache
    hits)."""
    client = Client(srv.port)
    rss_before = srv.rss_mb()
    hot_bodies = srv.bodies(source.take(step_count(2 * sustainable, seconds)))
    calm_bodies = srv.bodies(source.take(step_count(sustainable / 2, seconds)))
    hot = await run_step(client, hot_bodies, 2 * sustainable, seconds, srv.path)
    rss_after = srv.rss_mb()
    await asyncio.sleep(0.5)
    calm = await run_step(client, calm_bodies, sustainable / 2, seconds, srv.path)
    client.close()
    print(format_step("2x load", hot), flush=True)
    print(format_step("recovery", calm), flush=True)
    return {
        "rate": 2 * sustainable,
        "step": asdict(hot),
        "statuses": hot.statuses,
        "p99_ms": round(hot.p99_ms, 2),
        "reject_p99_ms": round(hot.reject_p99_ms, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "recovery_step": asdict(calm),
        "recovered": calm.sustained(),
    }


async def cache_hits(
    srv: Server, source: BodyStream, rate: float, seconds: float
) -> dict[str, Any]:
    """The same 200 requests over and over (warmed once first): the cache-hit path."""
    client = Client(srv.port)
    repeated = srv.bodies(source.take(200))
    for body in repeated:
        await client.post(srv.path, body)
    steps = []
    for r in (rate, 2 * rate, 4 * rate):
        step = await run_step(client, repeated, r, seconds, srv.path)
        print(format_step("cache hit", step), flush=True)
        steps.append(asdict(step))
    client.close()
    return {"steps": steps}
