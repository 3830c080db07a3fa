"""The live catalogue's change log: every upsert and retirement, durable, under the index root.

One JSON line per accepted admin call, `<index root>/changes.jsonl`, with a sequence number
that grows by one per record across every replica sharing the root: a writer takes an
exclusive `flock` on the file, reads what others appended since it last looked, appends its own
record in one `write` and `fsync`s before it lets go (so a 200 is only sent for a change that
survives a crash or a restart). Readers tail the file from the byte offset they reached, taking
complete lines only; a line a crashed writer left without its newline was never acknowledged
and is cut off by the next writer.

An index version is tied to the log by the sequence number it already holds
(`changes_through`, written by `build-index` into the manifest's `extra`, 0 when absent):
what a replica serving it must add live is every record after that number. `fold` reduces
records to the catalogue's final state (upserted items with their metadata, retired ids), the
one definition shared by the live delta (`service.core.delta`) and the rebuild
(`service.jobs.pipeline`).

The lock is POSIX `flock`: it holds between processes on one machine and on file systems that
support it (local disks; NFS v4 maps it to byte-range locks); replicas on other machines need a
shared file system that honours it.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from index.publish import fsync_dir

LOG_FILE = "changes.jsonl"
CHANGES_THROUGH = "changes_through"  # manifest extra key: the last sequence folded into a build

Op = Literal["upsert", "retire"]


@dataclass(frozen=True)
class CatalogueItem:
    """An upserted item as the caller sent it: the vector is computed from it by whichever
    model serves (or rebuilds) the catalogue."""

    item_id: str
    surface: str | None
    features: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "surface": self.surface, "features": dict(self.features)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CatalogueItem:
        surface = raw.get("surface")
        return cls(
            str(raw["item_id"]),
            None if surface is None else str(surface),
            {str(k): str(v) for k, v in (raw.get("features") or {}).items()},
        )


@dataclass(frozen=True)
class Change:
    """One accepted admin call: `items` upserted or `item_ids` retired, as a whole."""

    seq: int
    op: Op
    items: tuple[CatalogueItem, ...] = ()
    item_ids: tuple[str, ...] = ()
    index_version: str | None = None  # live on the replica that took it (for the record)
    ts: float = 0.0  # epoch seconds when it was written

    @property
    def ids(self) -> tuple[str, ...]:
        """The item ids this change touches."""
        return tuple(i.item_id for i in self.items) if self.op == "upsert" else self.item_ids

    def to_line(self) -> bytes:
        body: dict[str, Any] = {"seq": self.seq, "op": self.op, "ts": self.ts}
        if self.index_version is not None:
            body["index_version"] = self.index_version
        if self.op == "upsert":
            body["items"] = [i.to_json() for i in self.items]
        else:
            body["item_ids"] = list(self.item_ids)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Change:
        raw = json.loads(line)
        op = raw["op"]
        if op not in ("upsert", "retire"):
            raise ValueError(f"unknown change op {op!r}")
        return cls(
            seq=int(raw["seq"]),
            op=op,
            items=tuple(CatalogueItem.from_json(i) for i in raw.get("items", ())),
            item_ids=tuple(str(i) for i in raw.get("item_ids", ())),
            index_version=raw.get("index_version"),
            ts=float(raw.get("ts", 0.0)),
        )


@dataclass
class CatalogueState:
    """The catalogue changes folded: the latest upsert of each id still live, and the retired
    ids (an upsert after a retirement brings the id back; a retirement after an upsert drops
    it)."""

    upserts: dict[str, CatalogueItem] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)

    def apply(self, change: Change) -> None:
        if change.op == "upsert":
            for item in change.items:
                self.retired.discard(item.item_id)
                self.upserts[item.item_id] = item
        else:
            for item_id in change.item_ids:
                self.upserts.pop(item_id, None)
                self.retired.add(item_id)

    @property
    def size(self) -> int:
        """Distinct ids the state holds (upserted or retired)."""
        return len(self.upserts) + len(self.retired)


def fold(changes: Iterable[Change]) -> CatalogueState:
    """The final state after `changes`, in sequence order."""
    state = CatalogueState()
    for change in sorted(changes, key=lambda c: c.seq):
        state.apply(change)
    return state


def log_path(index_root: Path) -> Path:
    return Path(index_root) / LOG_FILE


class ChangeLog:
    """The change log of one index root, as this process has read it so far.

    `refresh` reads what was appended since; `append` writes one record under the file lock
    (after reading others' records, so sequence numbers stay dense and ordered). Blocking file
    I/O: call from a worker thread, one call at a time (the caller serialises).
    """

    def __init__(self, index_root: Path) -> None:
        self.path = log_path(index_root)
        self.changes: list[Change] = []  # every record read, by seq
        self._offset = 0

    @property
    def last_seq(self) -> int:
        return self.changes[-1].seq if self.changes else 0

    @property
    def last_ts(self) -> float:
        return self.changes[-1].ts if self.changes else 0.0

    def since(self, seq: int) -> list[Change]:
        """Records after sequence number `seq`, in order."""
        return self.changes[bisect.bisect_right(self.changes, seq, key=lambda c: c.seq) :]

    def refresh(self) -> list[Change]:
        """Read the records appended since the last read; returns them."""
        try:
            with open(self.path, "rb") as f:
                return self._read_from(f)
        except FileNotFoundError:
            return []

    def _read_from(self, f: Any) -> list[Change]:
        f.seek(self._offset)
        data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        new: list[Change] = []
        for line in data[:end].splitlines():
            if line.strip():
                change = Change.from_line(line)
                if change.seq > self.last_seq:
                    self.changes.append(change)
                    new.append(change)
        self._offset += end
        return new

    def append(
        self,
        op: Op,
        *,
        items: Sequence[CatalogueItem] = (),
        item_ids: Sequence[str] = (),
        index_version: str | None = None,
        check: Callable[[list[Change]], None] | None = None,
        after: int = 0,
    ) -> tuple[Change, list[Change]]:
        """Append one record, durably; returns it and the others' records read first.

        `check(others)` runs under the lock once the others' records are read, before anything
        is written: an exception it raises leaves the log as it was (nothing half-applied).
        The record's number is past `after` too (the live version's `changes_through`), so a
        log someone emptied after a rebuild never reuses numbers that version already holds.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as reader:
                others = self._read_from(reader)
            size = os.fstat(fd).st_size
            if size > self._offset:  # a torn last line from a writer that crashed: never acked
                os.ftruncate(fd, self._offset)
            if check is not None:
                check(others)
            change = Change(
                seq=max(self.last_seq, after) + 1,
                op=op,
                items=tuple(items),
                item_ids=tuple(item_ids),
                index_version=index_version,
                ts=time.time(),
            )
            line = change.to_line()
            os.lseek(fd, self._offset, os.SEEK_SET)
            written = os.write(fd, line)
            if written != len(line):
                os.ftruncate(fd, self._offset)
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
            self._offset += len(line)
            self.changes.append(change)
        finally:
            os.close(fd)  # releases the lock
        if created:
            fsync_dir(self.path.parent)
        return change, others


def read_changes(index_root: Path) -> list[Change]:
    """Every record of the index root's change log (none when there is no log)."""
    log = ChangeLog(index_root)
    log.refresh()
    return log.changes
