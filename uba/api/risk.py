"""Entity risk as the API serves it: the last ``risk.history_days`` days of risk tables,
loaded at start and by every reload (``POST /admin/reload`` or the periodic check), so a
new scored day appears after a reload, as a new bundle or snapshot does.

The index is separate from the model state: risk is served even when no model is
loaded, and a refused bundle does not keep new risk days from being served. The tables
are small (a row per user at risk per day), so the whole window is held in memory and a
request is a dictionary lookup.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TypedDict, cast

import polars as pl

from uba import io
from uba.alerting.risk import (
    RISK,
    RISK_SCHEMA,
    read_risk,
    risk_days,
    risk_window_days,
    stale_marker,
)
from uba.errors import UserError, first_line
from uba.logs import get_logger
from uba.manifest import read_manifest
from uba.settings import Settings

log = get_logger("api.risk")

# A day of the window on disk: date, published version, run manifest and risk parts (each
# file as inode, size, mtime; a part also by name).
FileStamp = tuple[int, ...]
DayKey = tuple[str, str | None, FileStamp, tuple[tuple[str, FileStamp], ...]]
RiskKey = tuple[DayKey, ...]


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
    """Which files the newest ``days`` risk days on disk are: their dates, published versions,
    run manifests and risk parts (a listing, a link read and a few stats per day), so the
    periodic check sees a new or re-scored day, a day a late verdict or a re-scored earlier
    day marked stale (the marker is written into the manifest, the version stays: the
    served ``stale`` flags kept saying false until a new day came), and a damaged or
    repaired file (a part restored in place was never picked up)."""
    found = risk_days(output_dir)[-days:]
    return tuple((d.isoformat(), io.published_version(output_dir, d),
                  file_stamp(io.run_manifest_path(output_dir, d)), _parts_stamp(output_dir, d)) for d in found)


def file_stamp(path: Path) -> FileStamp:
    """(inode, size, mtime_ns) of the file a path leads to; () when there is none."""
    try:
        info = path.stat()
    except OSError:
        return ()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _parts_stamp(output_dir: Path, day: date) -> tuple[tuple[str, FileStamp], ...]:
    """Each risk part of ``day`` by name and identity. A folder whose listing is refused (an
    entry named like a part that is not a regular file: a dangling link, a folder) is
    stamped entry by entry instead: raising here stopped every load, so one such entry in
    an old day left the whole window unserved (empty at start) instead of that day, which
    the load then names (``load_index``)."""
    try:
        parts = io.partition_files(output_dir, RISK, day)
    except UNREADABLE:
        parts = _entries_named_as_parts(io.partition_dir(output_dir, RISK, day))
    return tuple((part.name, file_stamp(part)) for part in parts)


def _entries_named_as_parts(folder: Path) -> list[Path]:
    try:
        return sorted(folder.glob("*.parquet"))
    except OSError:
        return []


# What a load of the risk window can meet on disk: a day's table or run manifest that does
# not read (truncated, replaced, not JSON, a hand-made link), or a listing that fails.
UNREADABLE = (OSError, UserError, pl.exceptions.PolarsError)
ROW_COLUMNS = ("event_date", *RISK_SCHEMA, "stale")


@dataclass(frozen=True)
class RiskIndex:
    """The window's rows by user, built once per load, and the days left out of it."""

    as_of: date | None = None
    days: int = 30
    by_user: dict[str, list[RiskRow]] = field(default_factory=dict)
    key: RiskKey = ()
    unreadable: tuple[tuple[date, str], ...] = ()  # (day, why), oldest first

    def history(self, user_id: str) -> list[RiskRow]:
        return self.by_user.get(user_id, [])


def day_rows(output_dir: Path, day: date) -> pl.DataFrame | None:
    """A day's risk rows (``ROW_COLUMNS``) with its ``stale`` flag from its run manifest; None
    without a table. Raises what ``read_risk`` and ``read_manifest`` raise for a day that
    does not read."""
    table = read_risk(output_dir, day)
    if table is None or table.is_empty():
        return None  # no rows: the day's stale flag is never shown, so its manifest is not read
    stale = bool(stale_marker(read_manifest(output_dir, day)))
    return table.with_columns(pl.lit(day, pl.Date).alias("event_date"), pl.lit(stale).alias("stale")).select(ROW_COLUMNS)


def load_index(settings: Settings, key: RiskKey | None = None) -> RiskIndex:
    """Read the window ending at the newest risk day (``key``, listed now when not given; an
    empty index when there is none). Each day is read on its own: a day whose table or run
    manifest does not read is left out and named in ``unreadable``, in one pass (the
    first-load fallback read the whole window twice and logged twice per attempt)."""
    output_dir, days = Path(settings.paths.output_dir), settings.risk.history_days
    key = risk_key(output_dir, days) if key is None else key
    if not key:
        return RiskIndex(days=days, key=key)
    end = date.fromisoformat(key[-1][0])
    frames, unreadable = [], []
    for day in risk_window_days(output_dir, end, days):
        try:
            rows = day_rows(output_dir, day)
        except UNREADABLE as exc:
            unreadable.append((day, first_line(exc)))
            continue
        if rows is not None:
            frames.append(rows)
    by_user: dict[str, list[RiskRow]] = {}
    if frames:
        for row in pl.concat(frames).sort(["user_id", "event_date"]).iter_rows(named=True):
            by_user.setdefault(row["user_id"], []).append(cast(RiskRow, row))  # polars rows are dict[str, Any]
    return RiskIndex(as_of=end, days=days, by_user=by_user, key=key, unreadable=tuple(unreadable))


def _readable_day_after(index: RiskIndex, key: RiskKey, served: date) -> bool:
    """Whether ``index`` has a day newer than ``served`` that read: then it is served, even
    without an older day that does not read. One damaged day must not hold back every
    later day's risk (today's most of all) until someone repairs it."""
    unreadable = {day for day, _ in index.unreadable}
    return any(day > served and day not in unreadable for day in (date.fromisoformat(entry[0]) for entry in key))


def _failed_files(index: RiskIndex, key: RiskKey) -> tuple[tuple[str, DayKey | None], ...]:
    """What a failed load is about: each unreadable day's problem and its files' identity."""
    files = {entry[0]: entry for entry in key}
    return tuple((f"{day.isoformat()}: {why}", files.get(day.isoformat())) for day, why in index.unreadable)


def _described(unreadable: tuple[tuple[date, str], ...]) -> str:
    return "; ".join(f"{day.isoformat()}: {why}" for day, why in unreadable)


class RiskHolder:
    """The served index, swapped by one assignment like the model state.

    A load that meets unreadable files is remembered by the identity of the files on disk
    (``risk_key``): the periodic check does not read the window again until one of them
    changes (a repair, a re-score, a new day, a stale marker), and a warning is repeated
    only when the unreadable days or their own files changed. One damaged day was two
    loads and up to two warnings every reload interval."""

    def __init__(self) -> None:
        self.current = RiskIndex()
        self.failed: RiskKey | None = None  # the files of the last load that met unreadable ones
        self._warned: object = None  # what the last warning was about (unreadable days and their files)
        self._lock = threading.Lock()  # the periodic check and a verdict's reload may overlap

    def load(self, settings: Settings) -> RiskIndex:
        """Read the newest window (start, ``POST /admin/reload``, after a verdict marked days stale)."""
        with self._lock:
            key = self._listed(settings)
            if key is not None:
                self._load(settings, key)
            return self.current

    def refresh(self, settings: Settings) -> bool:
        """The periodic check: read only when the files on disk are neither the served ones
        nor those of the last load that failed; True when it read."""
        with self._lock:
            key = self._listed(settings)
            if key is None or key in (self.current.key, self.failed):
                return False
            self._load(settings, key)
            return True

    def _listed(self, settings: Settings) -> RiskKey | None:
        """The files on disk now, or None (logged once per distinct error) when they cannot be listed."""
        try:
            return risk_key(Path(settings.paths.output_dir), settings.risk.history_days)
        except UNREADABLE as exc:
            self._warn_once(first_line(exc), f"entity risk not reloaded (still serving as of "
                                              f"{self.current.as_of}): {first_line(exc)}")
            return None

    def _load(self, settings: Settings, key: RiskKey) -> None:
        """Serve the window of ``key``. With unreadable days: keep a complete window already
        served unless a newer day read (docs/risk.md), else serve the readable days, which
        is better than every user read as never at risk until the bad day is re-scored."""
        try:
            fresh = load_index(settings, key)
        except UNREADABLE as exc:  # the window's listing failed after the key was taken
            self.failed = key
            self._warn_once(key, f"entity risk not reloaded (still serving as of {self.current.as_of}): "
                                 f"{first_line(exc)}")
            return
        if not fresh.unreadable:
            if self.failed is not None:
                log.info("entity risk reads again: serving every day of the window as of %s", fresh.as_of)
            self.current, self.failed, self._warned = fresh, None, None
            return
        self.failed = key
        about = _failed_files(fresh, key)
        if self.current.as_of is not None and not self.current.unreadable and not _readable_day_after(
                fresh, key, self.current.as_of):
            self._warn_once(about, f"entity risk not reloaded (still serving as of {self.current.as_of}); "
                                 f"days that do not read: {_described(fresh.unreadable)}")
            return
        self.current = fresh
        self._warn_once(about, f"entity risk served as of {fresh.as_of} without the days that do not read "
                             f"(retried when their files change): {_described(fresh.unreadable)}")

    def _warn_once(self, about: object, message: str) -> None:
        """Log ``message`` unless the last warning was about the same thing: the same
        unreadable files (a verdict that marks other days stale changes the key, not them)."""
        if about != self._warned:
            log.warning("%s", message)
            self._warned = about
