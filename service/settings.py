"""The service's one typed settings object, read from `UNISERVE_*` environment variables.

Built by the app factory (or the CLI) at startup, never at import. Each field's comment says what
it trades off; values that would make the service unsafe (unbounded memory, unbounded work per
request) fail validation at startup with a message quoting the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_KEY_CHARS = 16
# Values that ship in examples and templates: a key equal to one of these (case, spaces and
# punctuation ignored), starting with "your" or holding a template mark was never set for real.
_PLACEHOLDERS = frozenset(
    {"changeme", "changemenow", "changethis", "secret", "secretkey", "password", "passwd",
     "admin", "adminkey", "admintoken", "administrator", "apikey", "apitoken", "token", "key",
     "default", "test", "testing", "example", "placeholder", "letmein", "qwerty", "none",
     "null", "xxx", "todo", "fixme", "insecure", "notsecret"}
)  # fmt: skip
_PLACEHOLDER_MARKS = ("<", "${", "{{", "changeme", "change-me", "change_me", "replace",
                      "example", "placeholder", "dummy")  # fmt: skip


def weak_key_problem(key: str) -> str | None:
    """Why `key` is unfit as an API or admin key (empty, short, a placeholder), or None."""
    if not key.strip():
        return "must not be empty"
    lowered = key.strip().lower()
    letters = "".join(c for c in lowered if c.isalnum())
    if (
        letters in _PLACEHOLDERS
        or lowered.startswith("your")  # your-admin-key, your_api_key_here...
        or any(mark in lowered for mark in _PLACEHOLDER_MARKS)
    ):
        return "is a known placeholder, not a secret"
    if len(key) < MIN_KEY_CHARS:
        return f"must be at least {MIN_KEY_CHARS} characters, got {len(key)}"
    if len(set(key)) < 6:
        return f"uses only {len(set(key))} distinct characters"
    return None


# Hard ceilings: a setting above these would let one request or one user pin unbounded memory.
_MAX_K_CEILING = 100_000
_MAX_BODY_CEILING = 64 * 1024 * 1024  # 64 MiB
_MAX_SHARDS = 1024  # index.shard.MAX_SHARDS (not imported: importing `index` loads faiss)


class Settings(BaseSettings):
    # hide_input_in_errors: a refused key must not be echoed; messages quote other bad values.
    model_config = SettingsConfigDict(
        env_prefix="UNISERVE_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # Artifacts. One data_dir holds both by default, so a fresh checkout needs no configuration.
    data_dir: Path = Path(".uniserve")  # root of the model and index directories below
    model_dir: Path | None = None  # trained model directory; None = data_dir / "model"
    index_root: Path | None = None  # index versions + CURRENT pointer; None = data_dir / "indexes"

    # Network. Loopback by default: exposing the service is an explicit decision.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000

    # Embedded default. `sample`: the shipped corpus trained on when no artifact exists (bigger
    # corpora train slower). `bootstrap`: train and publish at startup when artifacts are missing;
    # off = start not ready instead (production, where artifacts come from the batch job).
    # `index_type`: faiss factory string of bootstrap builds; HNSW is fast with high recall but
    # memory-hungry, IVF/PQ types trade recall for memory.
    sample: str = "sample"
    bootstrap: bool = True
    index_type: str = "HNSW32"

    # Per-request limits: larger values allow bigger requests but let one caller take more CPU
    # and memory from everyone else. max_k: items one retrieve may return; max_events: events
    # in one request; max_candidates: ids in a rank candidate or retrieve exclude list;
    # max_items: items in one items/embed request; max_body_bytes: larger bodies get 413.
    max_k: Annotated[int, Field(ge=1, le=_MAX_K_CEILING)] = 1000
    max_events: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_candidates: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_items: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_body_bytes: Annotated[int, Field(ge=1024, le=_MAX_BODY_CEILING)] = 1_000_000

    # Model/index calls admitted at once (queued for a worker thread or running); beyond this a
    # request gets 429 at once: bounded latency under overload, at the price of rejections.
    max_inflight: Annotated[int, Field(ge=1, le=10_000)] = 64
    # Compute requests (retrieve, users/embed, rank, items/embed, shard/search) in progress at
    # once, from receipt to answer; beyond the limit a request gets 429 from its headers alone,
    # before its body is read or parsed. That bounds the wait of admitted requests to about the
    # limit divided by the throughput (Little's law), and keeps an overloaded service's answers
    # (429s included) fast. admission: `adaptive` (the default) sizes the limit from what this
    # process is measured to complete (`service.core.limit.AdaptiveLimit`): about the requests
    # it answers within admission_target_ms, so one default sheds at the knee of a slow and of
    # a fast machine; `fixed`: always max_pending_requests, which fits one machine (40 is what
    # one 2-core process completed in 50 ms, BENCHMARKS.md). max_pending_requests: the fixed
    # limit, and where the adaptive one starts before anything is measured.
    # admission_target_ms: the mean latency of admitted requests the adaptive limit is sized
    # for (lower: less queueing under overload, more 429s near capacity; higher: the reverse).
    # 35 keeps p99 near 50 ms at twice the sustainable rate; with 50 it reached 76-104 ms and
    # the 429s' p99 up to 30 ms (interleaved runs, BENCHMARKS.md "Adaptive admission").
    # admission_lag_ms: how late the event loop may run while the adaptive limit sheds load
    # (refuses over 5% of requests; 0: not watched). Every request, a 429 included, waits for
    # the loop before anything of it runs, so when more than 2% of the loop's ticks (every 2 ms)
    # run later than this, the limit steps down, though never below a third of what it would
    # be sized at for the target.
    # 3 keeps the 429s' p99 under 10 ms (a 429 waits about two of the loop's turns).
    # admission_min_limit / admission_max_limit: its bounds (a lower ceiling caps the requests
    # in progress and their memory whatever is measured).
    admission: Literal["adaptive", "fixed"] = "adaptive"
    max_pending_requests: Annotated[int, Field(ge=1, le=100_000)] = 40
    admission_target_ms: Annotated[float, Field(gt=0.0, le=10_000.0)] = 35.0
    admission_lag_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 3.0
    admission_min_limit: Annotated[int, Field(ge=1, le=100_000)] = 4
    admission_max_limit: Annotated[int, Field(ge=1, le=100_000)] = 1024

    # Dynamic batching of user-encoder calls and ANN searches. Concurrent requests are
    # coalesced into one forward pass / one FAISS search of up to batch_max_size; a free worker
    # waits up to batch_max_wait_ms for more before running a batch that is not full (more: bigger
    # batches at low load, for that much latency; 0, the default, adds no latency at low load,
    # and under load batches fill by themselves while the previous one runs).
    # batch_queue_size: requests waiting per stage; beyond it a request gets 429 at once, so a
    # queue never holds more work than a latency bound allows: about the requests served within
    # the latency target (lower: rejections sooner under overload, fewer bursts absorbed).
    batch_max_size: Annotated[int, Field(ge=1, le=4096)] = 64
    batch_max_wait_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    batch_queue_size: Annotated[int, Field(ge=1, le=100_000)] = 64

    # Result cache: a longer TTL saves compute but keeps serving a result for longer after it
    # was computed (keys carry model, index and event versions, so never across a swap or new
    # events). More entries: more hits, more memory. Either at 0 disables the cache.
    cache_ttl_seconds: Annotated[float, Field(ge=0.0, le=24 * 3600.0)] = 60.0
    cache_max_entries: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000

    # Recent-event store: longer histories personalise better but cost memory per user; idle
    # users are forgotten after events_ttl_seconds; beyond events_max_users the least recently
    # active are evicted, so memory stays bounded whatever the traffic.
    events_max_per_user: Annotated[int, Field(ge=1, le=10_000)] = 200
    events_ttl_seconds: Annotated[float, Field(gt=0.0)] = 7 * 24 * 3600.0
    events_max_users: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000

    # Redis: set redis_url (redis://[user:password@]host:port/db, rediss:// for TLS, unix://)
    # to keep the result cache and the recent-event store in Redis, shared by every replica and
    # surviving restarts; unset (or empty) = the in-process versions above. With Redis,
    # cache_max_entries and events_max_users do not apply: Redis's maxmemory bounds memory.
    redis_url: str | None = None
    # redis_cluster: redis_url names one node of a Redis Cluster (redis:// or rediss://, db 0;
    # the client learns the other nodes from it), and the keys spread over its masters by hash
    # slot, each user's keys in one slot. More memory and throughput than one server; a master
    # down costs only the users and cache entries in its slots (with
    # cluster-require-full-coverage no on the nodes; yes stops the whole cluster meanwhile).
    redis_cluster: bool = False
    # redis_timeout_ms: the most one request spends waiting on Redis, all its calls together
    # (each call gets what is left; after a failed call the request skips Redis). Shorter: a
    # stalled Redis costs each request less; too short: a healthy but busy Redis turns hits into
    # misses. redis_connect_timeout_ms: to open a new connection (also within that budget).
    redis_timeout_ms: Annotated[int, Field(ge=1, le=1000)] = 50
    redis_connect_timeout_ms: Annotated[int, Field(ge=1, le=1000)] = 50
    # Pooled connections per process; more allow more concurrent calls, each one costs Redis a
    # client slot. Calls beyond wait for a free connection (within their budget).
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    # Prepended to every Redis key (e.g. "staging:"), so deployments can share one Redis.
    redis_key_prefix: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.:{}-]*$")] = ""
    # Circuit breaker: after breaker_failures consecutive failed Redis calls, stop calling Redis
    # for breaker_reset_seconds, then let one probe call through. Fewer failures / a longer reset:
    # an outage costs fewer timeouts, but a blip disables the cache sooner and for longer.
    breaker_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_reset_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 5.0

    # Intra-op threads for torch; None keeps torch's default (all cores). Fewer threads per call
    # leave cores to concurrent requests; more make a single large call faster.
    torch_threads: Annotated[int | None, Field(ge=1, le=1024)] = None
    # OpenMP threads for FAISS searches; None keeps FAISS's default (all cores). A batched search
    # splits its queries over these threads. A single query's exact search of the live catalogue
    # delta (FAISS flat) uses them too: 10,000 rows took 0.1 ms on 2 busy cores, 0.05 ms on one.
    faiss_threads: Annotated[int | None, Field(ge=1, le=1024)] = None
    # FastAPI's own OpenTelemetry instrumentation (in FastAPI versions that have it): spans and
    # metrics per request once an OpenTelemetry SDK is configured in the process. Off, FastAPI
    # does not look for a configured provider on every request (a few percent of the event
    # loop's time); uniserve's own metrics are Prometheus (/metrics) either way.
    otel_telemetry: bool = False

    # Hot swap: how often CURRENT under the index root is checked for a new version (0 = never;
    # reload with POST /admin/reload). Shorter: replicas follow a publish sooner, for one small
    # file read per poll.
    index_poll_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = 5.0

    # Live catalogue (POST /admin/items/upsert and /admin/items/retire): the most distinct
    # items changed since the live index version was built (upserted or retired) before such
    # calls get 409 delta_full and a rebuild is due. Upserted items are searched exactly beside
    # the ANN index, so more: fewer rebuilds, for search time linear in the delta (and its
    # vectors in memory on every replica). Replicas sharing the index root read each other's
    # changes from its change log every index_poll_seconds (0: only their own).
    delta_max_items: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000

    # Multi-vector retrieval (POST /v1/retrieve with mode "multi", on an index built with
    # `uniserve build-index --mode multi`). multi_candidates: rows taken by MUVERA FDE inner
    # product and re-ranked by exact Chamfer similarity per request; more: recall closer to
    # exact Chamfer, for more re-ranking work (about linear). multi_interests: interest vectors
    # per user (hidden states at the last event of each surface and at segment ends); more:
    # more distinct interests matched, for a larger query FDE and re-ranking cost.
    multi_candidates: Annotated[int, Field(ge=1, le=100_000)] = 200
    multi_interests: Annotated[int, Field(ge=1, le=64)] = 4

    # Online quality (service.core.online). Each retrieve with a user_id is remembered (item
    # ids, versions, time) and later events of that user are matched against the lists served
    # within online_window_seconds before them, giving online hit rates per version. Longer
    # window: later interactions still count as hits, for more memory (lists are kept that
    # long) and more chance attribution; 0 = nothing remembered or matched. At most
    # online_max_lists lists per user (oldest dropped) and, in process, online_max_users users
    # (least recently served evicted; with Redis, maxmemory bounds it). The remembering and
    # matching run in the background: at most online_queue_size pieces pending, beyond that new
    # ones are dropped and counted (less: bounded memory under a burst, more dropped).
    online_window_seconds: Annotated[float, Field(ge=0.0, le=7 * 24 * 3600.0)] = 1800.0
    online_max_lists: Annotated[int, Field(ge=1, le=1000)] = 8
    online_max_users: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000
    online_queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # Shadow model: shadow_version names a published index version (under shadow_index_root,
    # default the live index root) loaded at startup as a shadow (also POST /admin/shadow). It
    # answers shadow_sample of the retrieves with a user_id after the live answer was made, in
    # the background, computed in a worker process of its own at the lowest CPU priority (it
    # gets only CPU time live serving leaves; it holds its own copy of model and index); its
    # lists are scored like the live ones. More sampling: evidence sooner, for more work in
    # the live process (a message each way per answer) and more answers dropped when the
    # machine is busy. At most shadow_queue_size shadow answers pending; beyond that they are
    # dropped and counted.
    shadow_version: str | None = None
    shadow_index_root: Path | None = None
    shadow_sample: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    shadow_queue_size: Annotated[int, Field(ge=1, le=100_000)] = 64
    # Gated promotion (POST /admin/promote, `uniserve promote`): the shadow replaces the live
    # version only when both have at least promote_min_events matched events and a one-sided
    # two-proportion test says the shadow's HR@10 is higher at promote_confidence. More events
    # or confidence: fewer wrong promotions, slower ones.
    promote_min_events: Annotated[int, Field(ge=1, le=100_000_000)] = 1000
    promote_confidence: Annotated[float, Field(ge=0.5, lt=1.0)] = 0.95

    # Auth (sent as `Authorization: Bearer <key>`, compared in constant time). api_key: needed by
    # every /v1 route when set; unset = /v1 is open (fine on loopback, the default bind; set it
    # before exposing the port). admin_key: the separate secret of /admin (reload, rollback);
    # unset = admin routes are disabled (403). Each key only opens its own routes. Either, when
    # set, must be 16+ characters, not a known placeholder ("changeme", "your-admin-key", ...)
    # and unlike the other: a guessable or shared key fails at startup. Env only: never a flag.
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    # Where /admin, /docs, /openapi.json and /metrics are served. admin_port unset: on the main
    # port with the API. Set: the main port serves /v1, /healthz and /readyz only, and
    # admin_host:admin_port (loopback by default) serves everything, so the exposed port carries
    # no admin surface, docs or metrics, at the price of a second listener.
    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    # Graceful shutdown: on SIGTERM/SIGINT the listeners close, requests in flight get this long
    # to finish (then they are cancelled), Redis is closed and the process exits 0. Longer: fewer
    # cut requests on a slow stop; shorter: deploys and scale-in wait less.
    shutdown_timeout_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 30.0
    # Worker processes serving the same port (`service.api.runner.supervise`). One process
    # spends its event loop's single core on HTTP and JSON while the encoder and search run in
    # threads; more workers use more cores for that part, at the price of smaller batches
    # (each worker batches its own requests): on a 2-core machine two workers sustained less
    # than one (BENCHMARKS.md, "Worker processes"), so add them where one process leaves cores
    # idle. Each loads its own model and batchers (memory grows by the model per worker; the
    # index file is memory-mapped and shared), and the in-process cache, recent events and
    # served lists would be per worker, so more than one needs redis_url. `/metrics` answers
    # for all (a `worker` label on every series).
    workers: Annotated[int, Field(ge=1, le=64)] = 1

    # Sharded retrieval. shard_urls: comma-separated base URLs of the replicas serving shards
    # 0, 1, ... of one sharded build (`uniserve build-index --shards S`); set = router mode: this
    # replica loads only the model, encodes each user once and fans /v1/retrieve out to every
    # shard's POST /v1/shard/search at once, merging their top-k. Unset (the default) = serve
    # the local index. shard_timeout_seconds: the most a retrieve waits for one shard; a shard
    # slower than this (or down) is left out and the answer is flagged partial. Shorter: a slow
    # shard costs each request less latency; too short: healthy but busy shards are cut off.
    shard_urls: str = ""
    shard_timeout_seconds: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0

    @field_validator("shard_urls")
    @classmethod
    def _shard_urls(cls, value: str) -> str:
        urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        for url in urls:
            if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
                raise ValueError(f"each shard URL must be an http:// or https:// URL, got {url!r}")
        if len(set(urls)) != len(urls):
            raise ValueError(f"shard URLs must be distinct, got {urls}")
        if len(urls) > _MAX_SHARDS:
            raise ValueError(f"at most {_MAX_SHARDS} shard URLs, got {len(urls)}")
        return ",".join(urls)

    @field_validator("shadow_version")
    @classmethod
    def _shadow_version(cls, value: str | None) -> str | None:
        return value.strip() if value is not None and value.strip() else None  # "" = unset

    @field_validator("index_poll_seconds")
    @classmethod
    def _poll(cls, value: float) -> float:
        if 0.0 < value < 0.1:
            raise ValueError(f"must be 0 (no polling) or at least 0.1 s, got {value}")
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = weak_key_problem(value.get_secret_value())
            if problem:  # says why, never echoes the secret
                raise ValueError(f"{problem}; unset the variable to disable what it guards")
        return value

    @model_validator(mode="after")
    def _separate(self) -> Settings:
        keys = (self.api_key, self.admin_key)
        if None not in keys and len({k.get_secret_value() for k in keys if k}) == 1:
            raise ValueError("api_key and admin_key must be different secrets")
        if self.admin_port is not None and self.admin_port == self.port:
            raise ValueError(f"admin_port must differ from port, both are {self.port}")
        return self

    @model_validator(mode="after")
    def _admission(self) -> Settings:
        if self.admission == "adaptive" and not (
            self.admission_min_limit <= self.max_pending_requests <= self.admission_max_limit
        ):
            raise ValueError(
                "the adaptive limit starts at max_pending_requests, which must lie within "
                f"[admission_min_limit, admission_max_limit], got {self.max_pending_requests} "
                f"and [{self.admission_min_limit}, {self.admission_max_limit}]"
            )
        return self

    @model_validator(mode="after")
    def _workers(self) -> Settings:
        if self.workers > 1 and self.redis_url is None:
            raise ValueError(
                f"workers={self.workers} needs redis_url: without Redis each worker would keep "
                "its own recent events, cache and served lists, so a user's events posted to "
                "one worker would be missing from another's answers"
            )
        return self

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if not self.redis_cluster:
            return self
        if self.redis_url is None:
            raise ValueError("redis_cluster is set but redis_url is not: name one cluster node")
        url = urlsplit(self.redis_url)
        if url.scheme == "unix":
            raise ValueError("redis_cluster needs a redis:// or rediss:// URL, got unix://")
        if url.path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only db 0, got {url.path.strip('/')!r}")
        if "{" in self.redis_key_prefix or "}" in self.redis_key_prefix:
            raise ValueError(
                f"redis_key_prefix must not hold {{ or }} with redis_cluster (it would override "
                f"the keys' hash tags), got {self.redis_key_prefix!r}"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got {value.split('@')[-1]!r}"
            )
        return value

    @field_validator("host", "admin_host", "sample", "index_type")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be blank, got {value!r}")
        return value

    @property
    def pending_ceiling(self) -> int:
        """The most compute requests ever in progress at once (the load-shedding limit's)."""
        if self.admission == "fixed":
            return self.max_pending_requests
        return self.admission_max_limit

    @property
    def model_path(self) -> Path:
        """The model directory: `model_dir`, else `data_dir / "model"`."""
        return self.model_dir if self.model_dir is not None else self.data_dir / "model"

    @property
    def index_path(self) -> Path:
        """The index root (versions + CURRENT): `index_root`, else `data_dir / "indexes"`."""
        return self.index_root if self.index_root is not None else self.data_dir / "indexes"

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard base URLs, shard 0 first; empty unless this replica is a router."""
        return tuple(self.shard_urls.split(",")) if self.shard_urls else ()

    @property
    def cache_enabled(self) -> bool:
        return self.cache_ttl_seconds > 0 and self.cache_max_entries > 0
