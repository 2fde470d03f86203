"""Entity risk as the API serves it: the last ``risk.history_days`` days of risk tables,
loaded at start and by every reload (``POST /admin/reload`` or the periodic check), so a
new scored day appears after a reload, as a new bundle or snapshot does.

The index is separate from the model state: risk is served even when no model is
loaded, and a refused bundle does not keep new risk days from being served. The tables
are small (a row per user at risk per day), so the whole window is held in memory and a
request is a dictionary lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TypedDict, cast

import polars as pl

from uba import io
from uba.alerting.risk import risk_days, risk_window, stale_marker
from uba.errors import UserError
from uba.logs import get_logger
from uba.manifest import read_manifest
from uba.settings import Settings

log = get_logger("api.risk")

RiskKey = tuple[tuple[str, str | None, tuple[int, int] | None], ...]


class RiskContributionRow(TypedDict):
    """One alert of a day's ``contributions`` (``uba.alerting.risk.CONTRIBUTION``)."""

    alert_id: str
    type: str
    event_id: str | None
    score: float | None
    cut: float | None
    points: float
    reason_kinds: list[str]


class RiskRow(TypedDict):
    """A row of ``uba.alerting.risk.risk_window`` (``event_date`` and ``RISK_SCHEMA``), plus
    whether its day is marked stale."""

    event_date: date
    user_id: str
    risk_score: float
    risk_level: str
    risk_delta: float | None
    contributions: list[RiskContributionRow]
    first_seen_high: date | None
    carried_score: float
    day_points: float
    weight: float
    stale: bool


def risk_key(output_dir: Path, days: int) -> RiskKey:
    """What the newest ``days`` risk days on disk are: their dates, published versions and
    run manifests' stamps (a listing, a link read and a stat per day), so the periodic check
    sees a new or re-scored day, and a day a late verdict or a re-scored earlier day marked
    stale (the marker is written into the manifest, the version stays: the served ``stale``
    flags kept saying false until a new day came)."""
    found = risk_days(output_dir)[-days:]
    return tuple((d.isoformat(), io.published_version(output_dir, d), _manifest_stamp(output_dir, d)) for d in found)


def _manifest_stamp(output_dir: Path, day: date) -> tuple[int, int] | None:
    """(mtime_ns, size) of the day's run manifest (replaced whole when marked stale), None without one."""
    try:
        info = io.run_manifest_path(output_dir, day).stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@dataclass(frozen=True)
class RiskIndex:
    """The window's rows by user, built once per load."""

    as_of: date | None = None
    days: int = 30
    by_user: dict[str, list[RiskRow]] = field(default_factory=dict)
    key: RiskKey = ()

    def history(self, user_id: str) -> list[RiskRow]:
        return self.by_user.get(user_id, [])


def load_index(settings: Settings, skip_unreadable: bool = False) -> RiskIndex:
    """Read the window ending at the newest risk day (an empty index when there is none);
    with ``skip_unreadable`` a day whose table does not read is left out (logged)."""
    output_dir, days = Path(settings.paths.output_dir), settings.risk.history_days
    key = risk_key(output_dir, days)
    if not key:
        return RiskIndex(days=days, key=key)
    end = date.fromisoformat(key[-1][0])
    window = risk_window(output_dir, end, days, skip_unreadable=skip_unreadable)
    stale = {d: bool(stale_marker(read_manifest(output_dir, d))) for d in window["event_date"].unique()}
    by_user: dict[str, list[RiskRow]] = {}
    for row in window.sort(["user_id", "event_date"]).iter_rows(named=True):
        row["stale"] = stale.get(row["event_date"], False)
        by_user.setdefault(row["user_id"], []).append(cast(RiskRow, row))  # polars rows are dict[str, Any]
    return RiskIndex(as_of=end, days=days, by_user=by_user, key=key)


# What a load of the risk window can meet on disk: the served index stays as it was.
UNREADABLE = (OSError, UserError, pl.exceptions.PolarsError)


class RiskHolder:
    """The served index, swapped by one assignment like the model state."""

    def __init__(self) -> None:
        self.current = RiskIndex()

    def load(self, settings: Settings) -> RiskIndex:
        """Load the newest window; on an unreadable table keep serving the previous one, or,
        when there is none yet (the first load), the window without the unreadable days:
        one corrupt day must not make every user read as never at risk until it is re-scored."""
        try:
            self.current = load_index(settings)
        except UNREADABLE as exc:
            if self.current.as_of is not None:
                log.warning("entity risk not reloaded (still serving as of %s): %s", self.current.as_of, exc)
                return self.current
            self._load_readable_days(settings, exc)
        return self.current

    def _load_readable_days(self, settings: Settings, exc: Exception) -> None:
        """The first load without the unreadable risk tables. What else fails to read (a
        day's run manifest, which the stale flags come from) leaves the empty index served,
        as before the fallback: raising here stopped the API at startup, and answered 500
        to a verdict after it was stored."""
        try:
            self.current = load_index(settings, skip_unreadable=True)
            log.warning("entity risk loaded without its unreadable days: %s", exc)
        except UNREADABLE as again:
            log.warning("entity risk not loaded (served as never at risk until it reads): %s", again)

    def changed_on_disk(self, settings: Settings) -> bool:
        return risk_key(Path(settings.paths.output_dir), settings.risk.history_days) != self.current.key
