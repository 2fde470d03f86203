"""Baseline poisoning protection: a user's day with an alert is not learned.

A baseline for D is rolled up from the user's days before D. Without protection an
attacker who took over an account is caught on day 0 and then becomes the norm: the
new device's share in the baseline grows with every day learned, the deviations
shrink, the alerts stop after a day or two and entity risk decays. So the user-days
that raised an alert (an unsuppressed event alert in ``flagged/`` or a user-day alert
in ``flagged_users/``) are left out of the baselines of the following days.

The unit left out is the user's whole day, not only the flagged events, because:

* the attacker's events under the threshold come from the same sessions as the flagged
  ones (same device, same hours): learning them teaches the baseline the attack anyway;
* the day's aggregate row is what baselines are built from, so dropping it is exact
  (distinct sessions and the longest session cannot be subtracted event by event).

Two exceptions keep the protection from freezing a user out of learning:

* a benign analyst verdict (on the event, its alert id or the user-day alert id) means
  the alert was normal behaviour: a day whose alerts are all benign is learned again
  on the next run;
* an alert raised against fewer than ``min_active_days`` learned days of the user's
  own history is not held against the day: a new user's first days are how they get a
  baseline at all.

Suppressed events are not alerts (an operator rule said the pattern is benign), so they
never hold a day back. The result depends only on the published outputs of days before
the scored day and on the verdicts: re-scoring a day with the same inputs gives the same
baselines.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from uba import io
from uba.schema import not_called_benign, unsuppressed_alert

if TYPE_CHECKING:
    from uba.settings import BaselineProtectionSettings

UNLEARNED_SCHEMA = pl.Schema({"user_id": pl.String(), "event_date": pl.Date()})
_EVENT_COLUMNS = ("event_id", "user_id", "is_anomaly", "suppressed", "baseline_days_active")
_USER_DAY_COLUMNS = ("user_id", "days_active")


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=UNLEARNED_SCHEMA)


def _column(frame: pl.DataFrame, name: str, default: object) -> pl.Expr:
    """A column of a published output, or ``default`` when an older output lacks it."""
    return pl.col(name) if name in frame.columns else pl.lit(default)


def _event_alert_users(flagged: pl.DataFrame | None, benign: Collection[str], min_active_days: int) -> pl.Series:
    """Users with an unsuppressed, not-benign event alert raised against enough history."""
    if flagged is None or flagged.is_empty():
        return pl.Series("user_id", [], dtype=pl.String)
    alerts = flagged.filter(
        unsuppressed_alert(flagged.columns)
        & (_column(flagged, "baseline_days_active", min_active_days).fill_null(0) >= min_active_days)
    )
    ids = alerts["event_id"].cast(pl.String).to_list()
    kept = not_called_benign("event", ids, benign, event_ids=True)
    return alerts.filter(kept)["user_id"].cast(pl.String)


def _user_day_alert_users(user_days: pl.DataFrame | None, day: date, benign: Collection[str],
                          min_active_days: int) -> pl.Series:
    """Users with a not-benign user-day alert raised against enough history."""
    if user_days is None or user_days.is_empty():
        return pl.Series("user_id", [], dtype=pl.String)
    alerts = user_days.filter(_column(user_days, "days_active", min_active_days).fill_null(0) >= min_active_days)
    users = alerts["user_id"].cast(pl.String).to_list()
    kept = not_called_benign("user_day", users, benign, day.isoformat())
    return alerts.filter(kept)["user_id"].cast(pl.String)


def alerted_user_days(flagged: pl.DataFrame | None, user_days: pl.DataFrame | None, day: date,
                      benign: Collection[str] = (), min_active_days: int = 0) -> pl.DataFrame:
    """``(user_id, event_date)`` of the users whose ``day`` must not be learned.

    ``flagged`` and ``user_days`` are the day's published ``flagged/`` and
    ``flagged_users/`` rows; ``benign`` holds the ids (event ids or alert ids) an analyst
    labelled benign. Pure: the same rows and verdicts give the same frame, sorted.
    """
    users = pl.concat([_event_alert_users(flagged, benign, min_active_days),
                       _user_day_alert_users(user_days, day, benign, min_active_days)])
    return (pl.DataFrame({"user_id": users.unique()})
            .with_columns(pl.lit(day, dtype=pl.Date).alias("event_date"))
            .select(list(UNLEARNED_SCHEMA)).cast(UNLEARNED_SCHEMA).sort("user_id"))


def without_user_days(aggregates: pl.LazyFrame, unlearned: pl.DataFrame) -> pl.LazyFrame:
    """The daily aggregate rows minus the user-days in ``unlearned``."""
    if unlearned.is_empty():
        return aggregates
    keys = unlearned.lazy().cast(UNLEARNED_SCHEMA)
    return (aggregates.with_columns(pl.col("user_id").cast(pl.String), pl.col("event_date").cast(pl.Date))
            .join(keys, on=["user_id", "event_date"], how="anti"))


def without_user_days_each_day(parts: list[tuple[date, pl.LazyFrame]],
                               unlearned: pl.DataFrame) -> list[pl.LazyFrame]:
    """``without_user_days`` for aggregates read a day at a time (``io.aggregate_part_scans``:
    each part holds one ``event_date``): each part filtered on its day's users. The same
    rows as the join, which held the whole window in memory before the baselines' group_by
    could start (~130 ms more CPU for each protected run of 20,000 users)."""
    if unlearned.is_empty():
        return [frame for _, frame in parts]
    users_on = {day: rows["user_id"].implode()
                for (day,), rows in unlearned.cast(UNLEARNED_SCHEMA).partition_by("event_date", as_dict=True).items()}
    kept = []
    for day, frame in parts:
        frame = frame.with_columns(pl.col("user_id").cast(pl.String), pl.col("event_date").cast(pl.Date))
        if day in users_on:  # a null user_id is never a learned-out user, as in the join
            frame = frame.filter(~pl.col("user_id").is_in(users_on[day]).fill_null(False))
        kept.append(frame)
    return kept


def _published(output_dir: Path, dataset: str, day: date, wanted: tuple[str, ...]) -> pl.DataFrame | None:
    """The columns of ``wanted`` a published output of ``day`` has (None when it has no part)."""
    table = io.read_partition(output_dir, dataset, day, f"baseline protection reads the alerts of "
                              f"{day.isoformat()} from it; re-score that day (backfill --force) or restore it "
                              "from a backup")
    return None if table is None else table.select([c for c in wanted if c in table.columns])


def unlearned_user_days(output_dir: Path, data_dir: Path, days: Iterable[date],
                        settings: BaselineProtectionSettings) -> pl.DataFrame:
    """The user-days of ``days`` that baselines leave out, from the published alerts.

    Empty when the protection is off. Reads ``flagged/`` and ``flagged_users/`` of each
    day (a few per cent of the events) and the feedback table; a day never scored has
    no alerts and is learned whole.
    """
    if not settings.enabled:
        return _empty()
    days = sorted(set(days))
    found = {d: (_published(output_dir, io.FLAGGED, d, _EVENT_COLUMNS),
                 _published(output_dir, io.FLAGGED_USERS, d, _USER_DAY_COLUMNS)) for d in days}
    found = {d: pair for d, pair in found.items() if pair[0] is not None or pair[1] is not None}
    if not found:
        return _empty()
    benign = io.benign_verdicts(data_dir)
    frames = [alerted_user_days(flagged, user_days, d, benign, settings.min_active_days)
              for d, (flagged, user_days) in found.items()]
    return pl.concat(frames).sort("event_date", "user_id")
