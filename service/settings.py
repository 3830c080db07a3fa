"""The service's one typed settings object, read from `UNISERVE_*` environment variables.

Built by the app factory (or the CLI) at startup, never at import. Each field's comment says what
it trades off; values that would make the service unsafe (unbounded memory, unbounded work per
request) fail validation at startup with a message quoting the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Hard ceilings: a setting above these would let one request or one user pin unbounded memory.
_MAX_K_CEILING = 100_000
_MAX_BODY_CEILING = 64 * 1024 * 1024  # 64 MiB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNISERVE_", extra="forbid", frozen=True)

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

    # Used by a later release (shared cache and event store in Redis); ignored for now.
    redis_url: str | None = None

    # Intra-op threads for torch; None keeps torch's default (all cores). Fewer threads per call
    # leave cores to concurrent requests; more make a single large call faster.
    torch_threads: Annotated[int | None, Field(ge=1, le=1024)] = None

    @field_validator("host", "sample", "index_type")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be blank, got {value!r}")
        return value

    @property
    def model_path(self) -> Path:
        """The model directory: `model_dir`, else `data_dir / "model"`."""
        return self.model_dir if self.model_dir is not None else self.data_dir / "model"

    @property
    def index_path(self) -> Path:
        """The index root (versions + CURRENT): `index_root`, else `data_dir / "indexes"`."""
        return self.index_root if self.index_root is not None else self.data_dir / "indexes"

    @property
    def cache_enabled(self) -> bool:
        return self.cache_ttl_seconds > 0 and self.cache_max_entries > 0
