"""Bridge between the pure feature functions and storage, for the job layer.

``train``, ``score`` and the user-day alerts need the same two steps: make sure every
day's aggregates exist (computed once from that day's events, recomputed only when the
events partition or the aggregate definition changed) and roll the lookback window of
aggregates up into baselines. These helpers do that with ``uba.io`` only; they are the
one place in ``uba/features`` that collects, and are meant to be called by jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from uba import io
from uba.directory import (
    DirectorySnapshot,
    directory_path,
    read_directory_snapshot,
    stored_directory_file,
)
from uba.features.aggregates import (
    AGGREGATES_VERSION,
    Categories,
    categories_of,
    daily_aggregates,
    empty_aggregates,
)
from uba.features.baselines import lookback_window, peer_groups, user_baselines
from uba.features.protection import (
    UNLEARNED_SCHEMA,
    unlearned_user_days,
    without_user_days_each_day,
)
from uba.logs import get_logger
from uba.model.bundle import PeerContext
from uba.schema import PARTITION_COLUMN

if TYPE_CHECKING:
    from uba.settings import Settings

log = get_logger("features")


def aggregate_tag(events_fingerprint: str, categories: Categories) -> str:
    """Name tag of an aggregates part: changes when the events, the code or the categories do."""
    key = "|".join([
        events_fingerprint, AGGREGATES_VERSION,
        ",".join(categories.device_types), ",".join(categories.event_types),
    ])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def ensure_aggregates(
    data_dir: Path, days: Iterable[date], categories: Categories | Settings | None = None
) -> list[date]:
    """Compute and store the aggregates of ``days`` that are missing or stale; return those days.

    ``categories`` is the events section (or whole settings) naming the device and event
    types to count. A day without an events partition has no aggregates (nothing is
    written, existing aggregates are kept: raw events may be pruned while their
    aggregates live on).
    """
    cats = categories_of(categories)
    written = []
    for day in sorted(set(days)):
        fingerprint = io.partition_fingerprint(data_dir, io.EVENTS, day)
        if fingerprint is None:
            continue
        if _aggregates_current(data_dir, day, aggregate_tag(fingerprint, cats)):
            continue
        io.verify_partition(data_dir, io.EVENTS, day)  # never derive from corrupt events
        events = io.scan_events(data_dir, day).with_columns(
            pl.lit(day, dtype=pl.Date).alias(PARTITION_COLUMN)
        )
        try:
            aggregates = daily_aggregates(events, cats).collect()
        except pl.exceptions.InvalidOperationError as exc:  # a stored value its field cannot hold
            raise io.unfit_event_value(exc, f"events of {day.isoformat()}") from exc
        io.write_aggregates(aggregates, data_dir, day, aggregate_tag(fingerprint, cats))
        written.append(day)
    return written


def stale_aggregate_days(data_dir: Path, days: Iterable[date], categories: Categories) -> list[date]:
    """The days among ``days`` whose aggregates ``ensure_aggregates`` would (re)compute.

    Reads only file names and footers, so a driver can hand the work to other processes.
    """
    stale = []
    for day in sorted(set(days)):
        fingerprint = io.partition_fingerprint(data_dir, io.EVENTS, day)
        if fingerprint is not None and not _aggregates_current(data_dir, day, aggregate_tag(fingerprint, categories)):
            stale.append(day)
    return stale


def _aggregates_current(data_dir: Path, day: date, tag: str) -> bool:
    """The stored aggregates of ``day`` are those of its events now and intact.

    A part whose bytes differ from its checksum record (or, written before records
    existed, whose footer does not read) counts as missing, so it is rebuilt from the
    events: aggregates are derived data. Costs one hash of a small file (cached per process).
    """
    if io.aggregates_tag(data_dir, day) != tag:
        return False
    (part,) = io.partition_files(data_dir, io.AGGREGATES, day)
    if io.part_intact(part):
        return True
    log.warning("aggregates part %s is corrupt; rebuilding it from the events of %s", part, day)
    return False


def lookback_days(as_of: date, lookback: int) -> list[date]:
    """The days of ``as_of``'s lookback window (``lookback_window``), oldest first: the
    aggregate partitions its baselines are read from."""
    start, end = lookback_window(as_of, lookback)
    return [start + timedelta(days=k) for k in range((end - start).days)]


def baselines_as_of(data_dir: Path, as_of: date, settings: Settings,
                    unlearned: pl.DataFrame | None = None,
                    directory: DirectorySnapshot | None = None) -> pl.LazyFrame:
    """Baselines for scoring ``as_of``, read ONLY from the aggregate partitions of the lookback.

    Raw events are never opened (call ``ensure_aggregates`` first). With no aggregates at
    all the result is just the population row with no information. ``unlearned``
    (``user_id, event_date``; see ``unlearned_as_of``) names user-days left out of the
    window: the days with alerts, under baseline poisoning protection. Where a user
    directory is stored, users are shrunk toward their peer group (``peers_of``);
    ``directory`` is the one a run already read (None: read it now).
    """
    parts = io.aggregate_part_scans(data_dir, lookback_days(as_of, settings.features.lookback_days))
    frames = [frame for _, frame in parts] if unlearned is None else without_user_days_each_day(parts, unlearned)
    aggregates = io.stack_aggregates(frames)
    if aggregates is None:
        aggregates = empty_aggregates(settings.events)
    table = (directory or read_directory_snapshot(data_dir)).table
    return user_baselines(aggregates, as_of, settings.features, peers=peers_of(table, settings))


def peers_of(directory: pl.DataFrame | None, settings: Settings) -> pl.DataFrame | None:
    """Each user's peer group from the directory (``features.peer_group_by``); None
    without a directory, so baselines are exactly what they were before peer groups."""
    return None if directory is None else peer_groups(directory, settings.features.peer_group_by)


def directory_context(data_dir: Path, snapshot: DirectorySnapshot | None = None) -> PeerContext:
    """Whether scoring with ``data_dir`` has a user directory, hence peer features: what a
    bundle's feature set is checked against before a batch run (``snapshot``: the
    directory the run read, else whether one is stored now)."""
    present = stored_directory_file(data_dir) is not None if snapshot is None else snapshot.present
    return PeerContext(present=present, source=str(directory_path(data_dir)) + ("" if present else " does not exist"))


def unlearned_as_of(output_dir: Path | None, data_dir: Path, as_of: date, settings: Settings) -> pl.DataFrame:
    """The user-days of ``as_of``'s lookback that its baselines leave out (the days whose
    published alerts were not called benign) within ``baseline_protection.max_days``
    before it; empty without an output directory or with
    ``baseline_protection.enabled`` false."""
    if output_dir is None:
        return pl.DataFrame(schema=UNLEARNED_SCHEMA)
    days = lookback_days(as_of, settings.features.lookback_days)
    oldest, _ = lookback_window(as_of, settings.baseline_protection.max_days)
    return unlearned_user_days(Path(output_dir), data_dir, [d for d in days if d >= oldest],
                               settings.baseline_protection)


def protected_baselines_as_of(data_dir: Path, as_of: date, settings: Settings,
                              output_dir: Path | None) -> pl.LazyFrame:
    """``baselines_as_of`` with the protection applied from the alerts under ``output_dir``:
    what ``score --date`` uses, so training, evaluation and user-day alerts see the same."""
    return baselines_as_of(data_dir, as_of, settings, unlearned_as_of(output_dir, data_dir, as_of, settings))


def snapshot_baselines(data_dir: Path, as_of: date, settings: Settings,
                       output_dir: Path | None = None) -> tuple[pl.DataFrame, Path]:
    """Collect the baselines for ``as_of`` (protected by the alerts under ``output_dir``,
    as scoring does) and write them as the snapshot the API loads."""
    frame = protected_baselines_as_of(data_dir, as_of, settings, output_dir).collect()
    return frame, io.write_baseline_snapshot(frame, data_dir, as_of)
