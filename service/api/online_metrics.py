"""Prometheus metrics of online quality (`service.core.online`), the shadow and promotion.

`uniserve_online_events_total{role,model_version,index_version,surface}` counts events matched
against a version's served lists and `uniserve_online_hits_total{...,k}` those whose item was in
them at rank < k (k "1", "5", "10") or at all ("served"), so online HR@k is
`hits{k="10"} / events` (`deploy/prometheus/rules.yml` records it). Labels never carry user or
item ids: versions are the few the replica served, the surface is the event's when the live
catalogue has it, "unknown" when the event has none and "other" for any other value (a caller
cannot add series). Background work dropped (`uniserve_online_dropped_total{work,reason}`), the
shadow's answers by outcome and the promotion decisions with the last decision's numbers are
exported too; closed-set series exist from the start, at 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.core.online import DROP_REASONS, K_LABELS, WORKS, Match, VersionKey
from service.core.promotion import Decision
from service.core.shadow import OUTCOMES, Shadow

UNKNOWN_SURFACE, OTHER_SURFACE = "unknown", "other"
MAX_PRESET_SURFACES = 64  # a version's series are made at 0 for at most this many surfaces
DECISIONS = ("promoted", "refused")


class OnlineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        version_labels = ["role", "model_version", "index_version", "surface"]
        self.events = Counter(
            "uniserve_online_events_total",
            "Events matched against the lists a version (role live or shadow) served the user "
            "within the online window, by the event's surface.",
            version_labels,
            registry=registry,
        )
        self.hits = Counter(
            "uniserve_online_hits_total",
            "Matched events whose item was in the version's served lists at rank < k (k 1, 5, "
            "10) or at all (k served).",
            [*version_labels, "k"],
            registry=registry,
        )
        self.dropped = Counter(
            "uniserve_online_dropped_total",
            "Online-quality work not done, by work (remember, match, shadow) and reason "
            "(overflow: queue full; unavailable: store down; error).",
            ["work", "reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "uniserve_online_pending",
            "Online-quality work pieces queued or running in the background.",
            registry=registry,
        )
        self.shadow = Counter(
            "uniserve_shadow_requests_total",
            "Retrieves the shadow model was asked to answer, by outcome (answered; dropped: its "
            "queue was full; failed: it raised, the live answer unaffected).",
            ["outcome"],
            registry=registry,
        )
        self.shadow_info = Gauge(
            "uniserve_shadow_info",
            "The loaded shadow's index version and model version (value 1); absent when none.",
            ["version", "model_version"],
            registry=registry,
        )
        self.decisions = Counter(
            "uniserve_promotion_decisions_total",
            "Promotion decisions (POST /admin/promote) by outcome: promoted or refused.",
            ["decision"],
            registry=registry,
        )
        self.last_p_value = Gauge(
            "uniserve_promotion_last_p_value",
            "One-sided p-value of the last promotion decision (shadow HR@10 > live HR@10).",
            registry=registry,
        )
        self.last_rate = Gauge(
            "uniserve_promotion_last_hit_rate",
            "Online HR@10 of each side (role live or shadow) at the last promotion decision.",
            ["role"],
            registry=registry,
        )
        self.last_events = Gauge(
            "uniserve_promotion_last_events",
            "Matched events of each side (role live or shadow) at the last promotion decision.",
            ["role"],
            registry=registry,
        )
        for work in WORKS:
            for reason in DROP_REASONS:
                self.dropped.labels(work, reason)
        for outcome in OUTCOMES:
            self.shadow.labels(outcome)
        for decision in DECISIONS:
            self.decisions.labels(decision)
        self._seen: set[tuple[str, ...]] = set()  # versions and (version, surface) made
        self._catalogue: Callable[[], object] = lambda: None
        self._surfaces: tuple[int, frozenset[str]] = (0, frozenset())

    def track_catalogue(self, live: Callable[[], object]) -> None:
        """`live()`: the live local engine (its index's surfaces are the known ones) or None."""
        self._catalogue = live

    def known_surfaces(self) -> frozenset[str]:
        """The live catalogue's surfaces (empty without a local engine)."""
        index = getattr(self._catalogue(), "index", None)
        if index is None:
            return frozenset()
        if self._surfaces[0] != id(index):  # computed once per index version
            self._surfaces = (id(index), frozenset(str(s) for s in np.unique(index.surfaces)))
        return self._surfaces[1]

    def surface_label(self, surface: str) -> str:
        if not surface:
            return UNKNOWN_SURFACE
        return surface if surface in self.known_surfaces() else OTHER_SURFACE

    def track_version(self, version: VersionKey) -> None:
        """Make a version's series exist at 0 (every surface label, every k) before its first
        event, so rates over them see that event. Idempotent."""
        if version in self._seen:
            return
        self._seen.add(version)
        surfaces = sorted(self.known_surfaces() - {""})
        if len(surfaces) > MAX_PRESET_SURFACES:
            surfaces = []
        for surface in (*surfaces, UNKNOWN_SURFACE, OTHER_SURFACE):
            self._series((*version, surface))

    def _series(self, labels: tuple[str, ...]) -> None:
        if labels not in self._seen:
            self._seen.add(labels)
            self.events.labels(*labels)
            for k in K_LABELS:
                self.hits.labels(*labels, k)

    def observe_match(self, match: Match) -> None:
        labels = (*match.version, self.surface_label(match.surface))
        self._series(labels)  # every k of a new series exists, at 0
        self.events.labels(*labels).inc()
        for k in match.hit_labels():
            self.hits.labels(*labels, k).inc()

    def observe_drop(self, work: str, reason: str) -> None:
        self.dropped.labels(work, reason).inc()

    def observe_shadow(self, outcome: str) -> None:
        self.shadow.labels(outcome).inc()

    def shadow_changed(self, shadow: Shadow | None) -> None:
        self.shadow_info.clear()
        if shadow is not None:
            self.shadow_info.labels(shadow.index_version, shadow.model_version).set(1)
            self.track_version(VersionKey("shadow", shadow.model_version, shadow.index_version))

    def observe_decision(self, decision: Decision) -> None:
        self.decisions.labels("promoted" if decision.promote else "refused").inc()
        self.last_p_value.set(decision.p_value)
        for role, arm in (("live", decision.live), ("shadow", decision.shadow)):
            self.last_rate.labels(role).set(arm.rate)
            self.last_events.labels(role).set(arm.events)
