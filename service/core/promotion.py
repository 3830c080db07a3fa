"""Gated promotion: the shadow becomes live only when its online HR@10 beats the live one's.

`decide` is the rule, a pure function: both versions need at least `min_events` matched events
(events that arrived within the window of a list the version served); then a one-sided
two-proportion z-test (pooled variance) of H1 "the shadow's hit rate is higher" against H0
"it is not"; the shadow is promoted when the p-value is below `1 - confidence`. Otherwise the
decision refuses and says why, with both rates, the counts and the p-value.

`promote` applies it to an app: the live version's and the shadow's counts from the tracker's
tally, and, when the decision is to promote, the shadow's version made live and `CURRENT`
(`Reloader.rollback(to=...)`: load, check and warm it, point CURRENT at it, swap), then the
shadow unloaded (it is live now). Only a shadow from the live index root can be promoted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from service.core.online import OnlineTracker, VersionKey
from service.core.reloader import Reloader
from service.core.shadow import ShadowSlot
from service.errors import ErrorType, ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One side of the comparison: a version and its online HR@10 counts."""

    model_version: str
    index_version: str
    events: int
    hits: int

    @property
    def rate(self) -> float:
        return self.hits / self.events if self.events else 0.0


@dataclass(frozen=True)
class Decision:
    promote: bool
    live: Arm
    shadow: Arm
    p_value: float
    confidence: float
    min_events: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["live"]["hit_rate"] = self.live.rate
        body["shadow"]["hit_rate"] = self.shadow.rate
        return body


def one_sided_p_value(live: Arm, shadow: Arm) -> float:
    """P(Z >= z) for z = (shadow rate - live rate) / pooled standard error; 1.0 when either
    side has no events or the pooled rate is 0 or 1 (no evidence either way)."""
    if live.events == 0 or shadow.events == 0:
        return 1.0
    pooled = (live.hits + shadow.hits) / (live.events + shadow.events)
    variance = pooled * (1.0 - pooled) * (1.0 / live.events + 1.0 / shadow.events)
    if variance <= 0.0:
        return 1.0
    z = (shadow.rate - live.rate) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def decide(live: Arm, shadow: Arm, *, min_events: int, confidence: float) -> Decision:
    if min_events < 1 or not 0.5 <= confidence < 1.0:
        raise ValueError(
            f"min_events ({min_events}) must be >= 1 and confidence ({confidence}) in [0.5, 1)"
        )
    p_value = one_sided_p_value(live, shadow)
    rates = (
        f"shadow HR@10 {shadow.rate:.4f} over {shadow.events} events, live {live.rate:.4f} "
        f"over {live.events}, one-sided p = {p_value:.4g}"
    )
    fewest = min(live.events, shadow.events)
    if fewest < min_events:
        promote, reason = False, f"too few matched events ({fewest} < {min_events}): {rates}"
    elif p_value >= 1.0 - confidence:
        promote = False
        reason = f"the shadow does not win at {confidence:.3g} confidence: {rates}"
    else:
        promote, reason = True, f"the shadow wins at {confidence:.3g} confidence: {rates}"
    return Decision(promote, live, shadow, p_value, confidence, min_events, reason)


async def promote(
    tracker: OnlineTracker,
    reloader: Reloader,
    slot: ShadowSlot,
    *,
    min_events: int,
    confidence: float,
) -> Decision:
    """Decide on the loaded shadow against the live version; when it wins, make it live and
    CURRENT. 409 `unservable` without a shadow, or with one from another index root;
    `ReloadError` when the swap is refused (the old version keeps serving)."""
    shadow, live = slot.shadow, reloader.engine
    if shadow is None:
        raise ServiceError(
            ErrorType.UNSERVABLE,
            "no shadow is loaded: load one with POST /admin/shadow or UNISERVE_SHADOW_VERSION",
        )
    if live is None:
        raise ServiceError(ErrorType.NOT_READY, reloader.not_ready_reason)
    if shadow.root.resolve() != reloader.root.resolve():
        raise ServiceError(
            ErrorType.UNSERVABLE,
            f"the shadow comes from {str(shadow.root)!r}, not the live index root "
            f"{str(reloader.root)!r}: publish it there, load it from there, then promote",
        )

    def arm(role: str, model_version: str, index_version: str) -> Arm:
        events, hits = tracker.tally.counts(VersionKey(role, model_version, index_version))
        return Arm(model_version, index_version, events, hits)

    decision = decide(
        arm("live", live.model_version, live.index_version),
        arm("shadow", shadow.model_version, shadow.index_version),
        min_events=min_events,
        confidence=confidence,
    )
    log.info(
        "promotion of %s (model %s) over %s: %s; %s",
        shadow.index_version,
        shadow.model_version,
        live.index_version,
        "promoting" if decision.promote else "refused",
        decision.reason,
    )
    if decision.promote:
        await reloader.rollback(to=shadow.index_version)  # load, point CURRENT, swap
        await slot.unload()
    return decision
