"""Entity risk: which users to look at today, as a 0-100 score carried from day to day.

Every ``score --date D`` run computes one row per user with a contribution on D or risk
carried over from earlier days, and publishes it with the day's other outputs as
``<output-dir>/risk/event_date=D/``. The formula (docs/risk.md):

1. Contributions of D: each unsuppressed event alert, ``event_points`` times
   ``1 + (anomaly_score - cut) / margin_unit`` (capped at ``max_margin_factor``), and
   each user-day alert, ``user_day_points`` times its ``day_score`` (capped). An alert
   an analyst called benign (feedback keyed by its event id or its alert id) adds
   nothing; a suppressed alert adds nothing.
2. Per user, contributions are grouped by their top reason kind: the n-th of one kind
   counts ``repeat_factor ** (n - 1)`` (only the first ``max_repeats`` count), and the
   day's points are multiplied by ``1 + diversity_bonus * (kinds - 1)`` (at most
   ``max_diversity_kinds`` extra kinds), then by the user's directory weight.
3. ``carried = previous score * 0.5 ** (calendar days since it / half_life_days)``, from
   the most recent earlier day with a risk table (days without a run count).
4. ``risk_score = carried + (100 - carried) * (1 - left)`` with ``left = (1 - max_day_gain *
   (1 - exp(-own / scale_points))) * (1 - sustained_day_gain * (1 - exp(-sustained / scale_points)))``,
   ``sustained`` being the points of contributions with a multi-day signal among their
   reasons and ``own`` the rest: bounded, exactly ``carried`` for a user with nothing new,
   and one day's own evidence closes at most ``max_day_gain`` of the gap to 100, so a
   single loud day stays below high while evidence on several days in a row (a campaign,
   or a multi-day signal that already stands for several days) climbs past it.

The pure part (``contributions_of_day``, ``compute_risk``) takes frames and returns frames;
reading and writing go through ``uba.io``. The table is the one source of a user's risk:
the report, ``GET /users/{id}/risk``, the export and ``evaluate`` read it with
:func:`read_risk` and :func:`read_risk_history`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final, overload

import polars as pl

from uba import io
from uba.alerting.feedback import (
    FeedbackSummary,
    PendingFeedback,
    pending_feedback_csv,
    store_feedback,
)
from uba.alerting.trends import TREND_KINDS
from uba.errors import UserError, first_line
from uba.logs import get_logger
from uba.manifest import RiskSection, RiskSettingsChange, RunManifest, StaleEntry, read_manifest
from uba.schema import JsonValue, alert_ids, unsuppressed_alert
from uba.settings import RISK_LEVELS, RiskSettings, Settings

log = get_logger("risk")

RISK = io.RISK
STALE_KEY: Final = "risk_stale"
CONTRIBUTION = pl.Struct({
    "alert_id": pl.String(), "type": pl.String(), "event_id": pl.String(), "score": pl.Float64(),
    "cut": pl.Float64(), "points": pl.Float64(), "reason_kinds": pl.List(pl.String()),
})
RISK_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "risk_score": pl.Float64(),
    "risk_level": pl.String(),
    "risk_delta": pl.Float64(),
    "contributions": pl.List(CONTRIBUTION),
    "first_seen_high": pl.Date(),
    "carried_score": pl.Float64(),
    "day_points": pl.Float64(),
    "weight": pl.Float64(),
}
CONTRIBUTION_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.String(), "alert_id": pl.String(), "type": pl.String(), "event_id": pl.String(),
    "score": pl.Float64(), "cut": pl.Float64(), "base_points": pl.Float64(), "reason_kinds": pl.List(pl.String()),
}
PREVIOUS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(), "risk_score": pl.Float64(), "first_seen_high": pl.Date(),
}
HIGH_LEVELS = ("high", "critical")


# --- the pure part -----------------------------------------------------------------


def event_contributions(flagged: pl.DataFrame, settings: RiskSettings) -> pl.DataFrame:
    """One candidate contribution per unsuppressed event alert, worth more the further over its cut."""
    names = flagged.columns
    cut = pl.coalesce("user_threshold", "threshold") if "user_threshold" in names else pl.col("threshold")
    alerts = flagged.filter(unsuppressed_alert(names))
    ids = alert_ids("event", alerts["event_id"].to_list())
    factor = (1.0 + (pl.col("score") - pl.col("cut")).clip(0.0, None) / settings.margin_unit)
    kinds = pl.col("reason_kinds") if "reason_kinds" in names else pl.lit([], pl.List(pl.String))
    return alerts.select(
        pl.col("user_id").cast(pl.String),
        pl.Series("alert_id", ids, dtype=pl.String),
        pl.lit("event").alias("type"),
        pl.col("event_id").cast(pl.String),
        pl.col("anomaly_score").cast(pl.Float64).alias("score"),
        cut.cast(pl.Float64).alias("cut"),
        kinds.cast(pl.List(pl.String)).alias("reason_kinds"),
    ).with_columns(
        (settings.event_points * factor.clip(None, settings.max_margin_factor)).alias("base_points"),
    ).select(list(CONTRIBUTION_COLUMNS))


def user_day_contributions(user_days: pl.DataFrame, day: date, settings: RiskSettings) -> pl.DataFrame:
    """One candidate contribution per user-day alert, worth its day_score (capped) in points."""
    score = "day_score" if "day_score" in user_days.columns else "risk_score"
    days = user_days.filter(pl.col(score) > 0)
    ids = alert_ids("user_day", days["user_id"].cast(pl.String).to_list(), day.isoformat())
    return days.select(
        pl.col("user_id").cast(pl.String),
        pl.Series("alert_id", ids, dtype=pl.String),
        pl.lit("user_day").alias("type"),
        pl.lit(None, pl.String).alias("event_id"),
        pl.col(score).cast(pl.Float64).alias("score"),
        pl.lit(0.0).alias("cut"),
        pl.col("reason_kinds").cast(pl.List(pl.String)),
    ).with_columns(
        (settings.user_day_points * pl.col("score").clip(None, settings.max_user_day_strength)).alias("base_points"),
    ).select(list(CONTRIBUTION_COLUMNS))


def contributions_of_day(flagged: pl.DataFrame, user_days: pl.DataFrame | None, day: date,
                         settings: RiskSettings, benign: Iterable[str] = ()) -> pl.DataFrame:
    """Every alert of ``day`` that may build risk, minus those an analyst called benign.

    ``benign`` holds feedback ids: an event's own id or either kind of alert id, so a
    verdict given in the export's terms (alert id) or the event's (event id) both count.
    """
    parts = [event_contributions(flagged, settings)]
    if user_days is not None and user_days.height:
        parts.append(user_day_contributions(user_days, day, settings))
    frame = pl.concat(parts)
    dropped = list(set(benign))
    if dropped:
        frame = frame.filter(~pl.col("alert_id").is_in(dropped) & ~pl.col("event_id").fill_null("").is_in(dropped))
    return frame


def user_weights(directory: pl.DataFrame | None, settings: RiskSettings) -> pl.DataFrame:
    """``user_id, weight`` from the directory (privilege x criticality); empty without one."""
    if directory is None or directory.is_empty():
        return pl.DataFrame(schema={"user_id": pl.String(), "weight": pl.Float64()})
    levels = settings.criticality_weights
    criticality = pl.col("criticality").replace_strict(list(levels), list(levels.values()), default=1.0,
                                                       return_dtype=pl.Float64)
    privileged = pl.when(pl.col("is_privileged").fill_null(False)).then(settings.privileged_weight).otherwise(1.0)
    return directory.select(pl.col("user_id").cast(pl.String), (privileged * criticality).alias("weight"))


def _weighted(contributions: pl.DataFrame, weights: pl.DataFrame, settings: RiskSettings) -> pl.DataFrame:
    """Each kept contribution with its final points (repeats, diversity and user weight applied)."""
    top = pl.col("reason_kinds").list.first().fill_null(pl.col("type"))
    ranked = (contributions.with_columns(top.alias("_kind"))
              .sort(["user_id", "_kind", "base_points", "alert_id"], descending=[False, False, True, False])
              .with_columns(pl.int_range(pl.len()).over("user_id", "_kind").alias("_rank"))
              .filter(pl.col("_rank") < settings.max_repeats))
    diversity = 1.0 + settings.diversity_bonus * (pl.col("_kind").n_unique().over("user_id") - 1).clip(
        None, settings.max_diversity_kinds)
    return (ranked.join(weights, on="user_id", how="left")
            .with_columns(pl.col("weight").fill_null(1.0))
            .with_columns((pl.col("base_points") * settings.repeat_factor ** pl.col("_rank") * diversity
                           * pl.col("weight")).alias("points")))


def sustained(reason_kinds: pl.Expr) -> pl.Expr:
    """Whether a contribution is evidence of several days (a multi-day user-day signal among
    its reasons), which one day's cap does not hold back."""
    return reason_kinds.list.eval(pl.element().is_in(list(TREND_KINDS))).list.any().fill_null(False)


def _today(contributions: pl.DataFrame, weights: pl.DataFrame, settings: RiskSettings) -> pl.DataFrame:
    """``user_id, day_points, sustained_points, weight, contributions`` (biggest first) of the
    users with any; ``sustained_points`` is the part from multi-day signals."""
    weighted = _weighted(contributions, weights, settings)
    structs = pl.struct(*(pl.col(name) for name in CONTRIBUTION.to_schema())).alias("contributions")
    return (weighted.sort(["user_id", "points", "alert_id"], descending=[False, True, False])
            .group_by("user_id", maintain_order=True)
            .agg(pl.col("points").sum().alias("day_points"),
                 pl.col("points").filter(sustained(pl.col("reason_kinds"))).sum().alias("sustained_points"),
                 pl.col("weight").first(), structs))


@overload
def decay(score: pl.Expr, days: pl.Expr | float, half_life_days: float) -> pl.Expr: ...
@overload
def decay(score: float, days: pl.Expr, half_life_days: float) -> pl.Expr: ...
@overload
def decay(score: float, days: float, half_life_days: float) -> float: ...
def decay(score: pl.Expr | float, days: pl.Expr | float, half_life_days: float) -> pl.Expr | float:
    """``score`` after ``days`` calendar days of half-life ``half_life_days``."""
    return score * 0.5 ** (days / half_life_days)


def level_of(score: pl.Expr, settings: RiskSettings) -> pl.Expr:
    """The documented cuts: low < medium_cut <= medium < high_cut <= high < critical_cut <= critical."""
    return (pl.when(score >= settings.critical_cut).then(pl.lit("critical"))
            .when(score >= settings.high_cut).then(pl.lit("high"))
            .when(score >= settings.medium_cut).then(pl.lit("medium"))
            .otherwise(pl.lit("low")))


def compute_risk(contributions: pl.DataFrame, previous: pl.DataFrame | None, previous_day: date | None,
                 day: date, settings: RiskSettings, directory: pl.DataFrame | None = None) -> pl.DataFrame:
    """The risk table of ``day`` (``RISK_SCHEMA``, riskiest first) from its contributions and
    the table of ``previous_day`` (the most recent earlier day that has one, or None).

    ``risk_delta`` is against the user's score on the day before D: the previous table's
    score, decayed over the days between it and D - 1 (none when it is D - 1).
    ``first_seen_high`` keeps the day an episode at high or above began while the user
    stays there (a user who fell below high on the day before starts a new one).
    """
    weights = user_weights(directory, settings)
    today = _today(contributions, weights, settings).drop("weight")
    prev = previous if previous is not None else pl.DataFrame(schema=PREVIOUS_SCHEMA)
    gap = (day - previous_day).days if previous_day is not None else 0
    carried = prev.select(
        pl.col("user_id").cast(pl.String),
        decay(pl.col("risk_score"), gap, settings.half_life_days).alias("carried_score"),
        decay(pl.col("risk_score"), gap - 1, settings.half_life_days).alias("_yesterday"),
        pl.col("first_seen_high").cast(pl.Date).alias("_first_high"),
    )
    joined = (today.join(carried, on="user_id", how="full", coalesce=True)
              .join(weights, on="user_id", how="left")
              .with_columns(pl.col("carried_score", "_yesterday", "day_points", "sustained_points").fill_null(0.0),
                            pl.col("weight").fill_null(1.0),
                            pl.col("contributions").fill_null(pl.lit([], pl.List(CONTRIBUTION)))))
    score = gained(pl.col("carried_score"), pl.col("day_points") - pl.col("sustained_points"),
                   pl.col("sustained_points"), settings)
    still_high = pl.col("_first_high").is_not_null() & (pl.col("_yesterday") >= settings.high_cut)
    return (joined.with_columns(score.alias("risk_score"))
            .with_columns(level_of(pl.col("risk_score"), settings).alias("risk_level"),
                          (pl.col("risk_score") - pl.col("_yesterday")).alias("risk_delta"))
            .with_columns(pl.when(pl.col("risk_level").is_in(HIGH_LEVELS))
                          .then(pl.when(still_high).then(pl.col("_first_high")).otherwise(pl.lit(day)))
                          .otherwise(pl.lit(None, pl.Date)).alias("first_seen_high"))
            .filter((pl.col("contributions").list.len() > 0) | (pl.col("risk_score") >= settings.min_score))
            .sort(["risk_score", "user_id"], descending=[True, False])
            .select([pl.col(name).cast(dtype) for name, dtype in RISK_SCHEMA.items()]))


def gained(carried: pl.Expr, points: pl.Expr, sustained_points: pl.Expr, settings: RiskSettings) -> pl.Expr:
    """``carried`` plus the share of the gap to 100 that the day's points close. One day's own
    evidence (``points``) closes at most ``max_day_gain`` of it, so a single loud day stays
    below what evidence on several days reaches; multi-day signals (``sustained_points``)
    already stand for several days and close up to ``sustained_day_gain`` (docs/risk.md)."""
    left = ((1.0 - settings.max_day_gain * (1.0 - (-points / settings.scale_points).exp()))
            * (1.0 - settings.sustained_day_gain * (1.0 - (-sustained_points / settings.scale_points).exp())))
    return carried + (100.0 - carried) * (1.0 - left)


def level_counts(table: pl.DataFrame) -> dict[str, int]:
    """Users per level, every level named (for the manifest)."""
    counts = dict(table.group_by("risk_level").len().iter_rows()) if table.height else {}
    return {level: int(counts.get(level, 0)) for level in RISK_LEVELS}


# --- reading ------------------------------------------------------------------------


def risk_days(output_dir: Path) -> list[date]:
    """Days that have a published risk table, ascending."""
    return io.partition_dates(Path(output_dir), RISK)


def rescore_remedy(day: date) -> str:
    """What repairs a published table of ``day`` that does not read: every reader that names
    such a part ends with the same advice."""
    return (f"re-score {day.isoformat()} (uba-batch score --date {day.isoformat()}), which rewrites it, "
            "or restore it from a backup")


def read_risk(output_dir: Path, day: date) -> pl.DataFrame | None:
    """The risk table of ``day`` (``RISK_SCHEMA``), or None when the day has none (never
    scored, or scored before entity risk existed). The one reader of the table.

    A part that is not a readable risk table (truncated, replaced, another table's
    columns) is a CorruptPartError naming it and the re-score that rewrites it: it was a
    decoder traceback from score, report and ``alerts close``, and a 500 from the API's
    PATCH /alerts and POST /feedback after the verdict was stored.
    """
    output_dir = Path(output_dir)
    remedy = rescore_remedy(day)
    table = io.read_partition(output_dir, RISK, day, remedy)
    if table is None:
        return None
    try:
        return table.select([pl.col(n).cast(t) for n, t in RISK_SCHEMA.items()])
    except pl.exceptions.PolarsError as exc:
        raise io.CorruptPartError(f"the risk table of {day.isoformat()} under {io.partition_dir(output_dir, RISK, day)} "
                                  f"does not read as one ({first_line(exc)}); {remedy}") from exc


def read_risk_or_none(output_dir: Path, day: date) -> pl.DataFrame | None:
    """:func:`read_risk`, with an unreadable table logged and taken as none, for the two
    readers that must get past one: a re-score of ``day`` (which is what rewrites it;
    later days are then marked stale, since what they carried is unknown) and the search
    for the days a late verdict makes stale (one bad day must not keep the readable ones
    from being marked)."""
    try:
        return read_risk(output_dir, day)
    except io.CorruptPartError as exc:
        log.warning("%s", exc)
        return None


def previous_risk(output_dir: Path, day: date) -> tuple[date, pl.DataFrame] | None:
    """The most recent table before ``day`` and its date (days without a run are skipped)."""
    earlier = [d for d in risk_days(output_dir) if d < day]
    for candidate in reversed(earlier):
        table = read_risk(output_dir, candidate)
        if table is not None:
            return candidate, table
    return None


def risk_window_days(output_dir: Path, end: date, days: int = 30) -> list[date]:
    """The days with a risk table among the ``days`` days ending at ``end``, oldest first."""
    first = end - timedelta(days=min(days - 1, (end - date.min).days))  # clipped at 0001-01-01
    return [day for day in risk_days(output_dir) if first <= day <= end]


def risk_window(output_dir: Path, end: date, days: int = 30) -> pl.DataFrame:
    """Every row of the risk tables of the ``days`` days ending at ``end``, with ``event_date``
    (days without a table are absent), oldest first."""
    schema = {"event_date": pl.Date(), **RISK_SCHEMA}
    rows = []
    for day in risk_window_days(output_dir, end, days):
        table = read_risk(output_dir, day)
        if table is not None:
            rows.append(table.with_columns(pl.lit(day, pl.Date).alias("event_date")).select(list(schema)))
    return pl.concat(rows) if rows else pl.DataFrame(schema=schema)


def user_series(window: pl.DataFrame, user_id: str, fill_days: Sequence[date] | None = None) -> pl.DataFrame:
    """One user's rows of a :func:`risk_window`, oldest first. With ``fill_days`` (the
    window's :func:`risk_window_days`) each of those days gets a row: a user missing from a
    day's table had no contribution and less than ``risk.min_score``, shown as 0 (what a
    chart needs). The days come from the listing, not the window's rows: a day whose
    table is empty (nobody at risk) has no row there, and the chart skipped it."""
    mine = window.filter(pl.col("user_id") == user_id)
    if fill_days is None:
        return mine.sort("event_date")
    days = pl.DataFrame({"event_date": sorted(set(fill_days))}, schema={"event_date": pl.Date()})
    return (days.join(mine, on="event_date", how="left")
            .with_columns(pl.lit(user_id).alias("user_id"), pl.col("risk_score").fill_null(0.0),
                          pl.col("risk_level").fill_null("low"),
                          pl.col("contributions").fill_null(pl.lit([], pl.List(CONTRIBUTION))))
            .select(window.columns).sort("event_date"))


def read_risk_history(output_dir: Path, user_id: str, days: int = 30, end: date | None = None,
                      fill: bool = False) -> pl.DataFrame:
    """The user's risk over the ``days`` days ending at ``end`` (default: the newest risk
    day), oldest first, each row with its ``event_date`` (see :func:`user_series`)."""
    available = risk_days(output_dir)
    end = end or (available[-1] if available else None)
    if end is None:
        return pl.DataFrame(schema={"event_date": pl.Date(), **RISK_SCHEMA})
    return user_series(risk_window(output_dir, end, days), user_id,
                       risk_window_days(output_dir, end, days) if fill else None)


# --- staleness ----------------------------------------------------------------------


def stale_marker(manifest: RunManifest | None) -> list[StaleEntry]:
    """The ``risk_stale`` entries of a day's manifest (empty when its risk is current)."""
    if not manifest:
        return []
    return list(manifest.get(STALE_KEY) or [])


def mark_stale_held(output_dir: Path, first: date, reason: str, changed_day: date) -> list[date]:
    """Add a ``risk_stale`` entry (reason, the day that changed, when) to the published
    manifest of every risk day from ``first`` on; returns the days marked. The caller holds
    ``io.stale_marks_lock`` (a score run between its check and its commit, or
    :func:`record_verdicts`; ``flock`` is not re-entrant, so taking it again here would
    wait for itself for good). The manifest file inside the published version is replaced
    atomically (its links are left alone); re-scoring the day writes a new manifest without
    the marker, which is how it clears.

    The days are listed under the lock, not by the caller before it: a day first published
    between a listing and the lock (its run's check saw the day before it still unmarked)
    was left out, and carried the changed risk as current for good (found by an attack).
    Under the lock, a run commits either before the listing (and is marked) or after the
    marking (and sees the day before it marked: born stale)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry: dict[str, JsonValue] = {"changed_day": changed_day.isoformat(), "reason": reason, "marked_at": now}
    days = [day for day in risk_days(output_dir) if day >= first]
    marked = [day for day in days if _add_mark(Path(output_dir), day, entry)]
    if marked:
        log.warning("entity risk of %s is stale (%s): re-score %s", ", ".join(d.isoformat() for d in marked),
                    reason, "it" if len(marked) == 1 else "them in date order (uba-batch backfill)")
    return marked


def _add_mark(output_dir: Path, day: date, entry: dict[str, JsonValue]) -> bool:
    """Add ``entry`` to the published manifest of ``day`` (the file inside its version,
    replaced atomically; its links are left alone); False when the day has none that reads."""
    link = io.run_manifest_path(output_dir, day)
    if not link.exists():
        return False
    target = Path(link.resolve())
    manifest = _manifest_to_mark(target, day)
    if manifest is None:
        return False
    marks = manifest.get(STALE_KEY) or []
    manifest[STALE_KEY] = [*(marks if isinstance(marks, list) else []), entry]
    io.write_json_atomic(manifest, target, durable=True)
    return True


def _manifest_to_mark(path: Path, day: date) -> dict[str, JsonValue] | None:
    """The manifest object to add a marker to, or None (logged, naming the file) when it does
    not read as one: one damaged day must not keep the later days of a verdict from being
    marked (the marking stopped at it, after the verdict was stored). Re-scoring that day
    writes a new manifest, which is what repairs it."""
    try:
        manifest = io.read_json(path)
    except UserError as exc:
        log.warning("entity risk of %s not marked stale: %s; %s", day.isoformat(), exc, rescore_remedy(day))
        return None
    if not isinstance(manifest, dict):
        log.warning("entity risk of %s not marked stale: run manifest %s does not hold a JSON object; %s",
                    day.isoformat(), path, rescore_remedy(day))
        return None
    return manifest


def later_risk_days(output_dir: Path, day: date) -> list[date]:
    """Published risk days after ``day``: they all carry ``day``'s risk forward."""
    return [d for d in risk_days(output_dir) if d > day]


def _carried_part(table: pl.DataFrame | None) -> pl.DataFrame:
    """What a later day reads of a table: the score and episode start of each user."""
    if table is None:
        return pl.DataFrame(schema=PREVIOUS_SCHEMA)
    return table.select(list(PREVIOUS_SCHEMA)).sort("user_id")


def tables_differ(old: pl.DataFrame | None, new: pl.DataFrame) -> bool:
    """Whether a re-scored day changes what later days carry (an identical re-run does not)."""
    if old is None:
        return True
    return not _carried_part(old).equals(_carried_part(new))


def days_with_contribution(output_dir: Path, ids: Iterable[str]) -> list[date]:
    """Risk days whose contributions include any of ``ids`` (alert ids or event ids)."""
    wanted = list(set(ids))
    found: list[date] = []
    if not wanted:
        return found
    for day in risk_days(output_dir):
        table = read_risk_or_none(output_dir, day)
        if table is None or table.is_empty():
            continue
        hits = table.select(pl.col("contributions").explode().struct.unnest()).filter(
            pl.col("alert_id").is_in(wanted) | pl.col("event_id").fill_null("").is_in(wanted))
        if hits.height:
            found.append(day)
    return found


def days_with_candidate(output_dir: Path, ids: Iterable[str]) -> list[date]:
    """Risk days whose published alerts include any of ``ids`` as a contribution before
    verdicts (an unsuppressed event alert or a user-day alert): where an alert left out as
    benign would count again. (Which alerts are candidates does not depend on the risk
    settings, only their points do.)"""
    wanted = list(set(ids))
    found: list[date] = []
    if not wanted:
        return found
    for day in risk_days(output_dir):
        flagged = _published_alerts(output_dir, io.FLAGGED, day)
        user_days = _published_alerts(output_dir, io.FLAGGED_USERS, day)
        if flagged is None:
            continue
        candidates = contributions_of_day(flagged, user_days, day, RiskSettings())
        if candidates.filter(pl.col("alert_id").is_in(wanted) | pl.col("event_id").fill_null("").is_in(wanted)).height:
            found.append(day)
    return found


def _published_alerts(output_dir: Path, dataset: str, day: date) -> pl.DataFrame | None:
    """A published ``flagged/`` or ``flagged_users/`` table of ``day`` (None when absent or
    unreadable: that day is not found, the others still are)."""
    try:
        return io.read_partition(Path(output_dir), dataset, day)
    except (OSError, io.CorruptPartError) as exc:
        log.warning("%s of %s not read while looking for a verdict's alert: %s", dataset, day, exc)
        return None


def mark_stale_after_verdicts_held(output_dir: Path, ids: Iterable[str], unbenign: Iterable[str] = ()) -> list[date]:
    """A benign verdict on an alert that built some day's risk makes that day and every later
    one stale (their scores still include it); so does a benign verdict taken back
    (``unbenign``: now malicious), from the first day the alert was left out of. Returns
    the days marked. The caller holds ``io.stale_marks_lock`` (:func:`record_verdicts`):
    the days the alerts built are searched under it too, since a day whose first run
    commits after a search done before the lock was not found, and its risk, built with
    the alert, stayed current (found by an attack)."""
    ids, unbenign = list(ids), list(unbenign)
    hits = [(d, "benign verdict on {} that built the risk of {}", ids) for d in days_with_contribution(output_dir, ids)]
    hits += [(d, "benign verdict on {} taken back (malicious), which counts it again in the risk of {}", unbenign)
             for d in days_with_candidate(output_dir, unbenign)]
    if not hits:
        return []
    first, template, named = min(hits, key=lambda hit: hit[0])
    shown = named[0] if len(named) == 1 else f"{len(named)} alerts"
    return mark_stale_held(output_dir, first, template.format(shown, first.isoformat()), first)


# --- one run's risk -----------------------------------------------------------------


@dataclass
class RiskRun:
    """The risk of one score run: computed from the run's staged alerts before publishing,
    checked against what changed meanwhile just before the commit, and, after it, used to
    mark later days stale when the day's risk changed."""

    day: date
    table: pl.DataFrame
    previous_day: date | None
    previous_run: str | None
    benign_ids: frozenset[str]  # the verdicts in effect it was computed with, checked again before the commit
    old_table: pl.DataFrame | None
    settings_changed: RiskSettingsChange | None = None

    @classmethod
    def compute(cls, settings: Settings, day: date, flagged: pl.DataFrame, user_days: pl.DataFrame | None,
                directory: pl.DataFrame | None) -> RiskRun:
        """Read yesterday's risk (or the latest earlier) and feedback; compute D's table
        with ``directory``, the one the run read once (None: no directory)."""
        output_dir, data_dir = Path(settings.paths.output_dir), Path(settings.paths.data_dir)
        benign = io.benign_verdicts(data_dir)  # an event alert's two ids are one verdict
        found = previous_risk(output_dir, day)
        previous_day, previous = found if found else (None, None)
        contributions = contributions_of_day(flagged, user_days, day, settings.risk, benign)
        table = compute_risk(contributions, previous, previous_day, day, settings.risk, directory)
        previous_manifest = read_manifest(output_dir, previous_day) if previous_day else None
        return cls(day=day, table=table, previous_day=previous_day,
                   previous_run=None if previous_manifest is None else previous_manifest.get("run_id"),
                   benign_ids=frozenset(benign), old_table=read_risk_or_none(output_dir, day),
                   settings_changed=settings_change(previous_manifest, settings.risk, day))

    def manifest_section(self, settings: RiskSettings) -> RiskSection:
        """The manifest's ``risk`` section: counts, what it was computed from, the cuts,
        every setting of the formula, and those that changed since the carried day."""
        section: RiskSection = {
            "users": self.table.height,
            "levels": level_counts(self.table),
            "previous": ({"date": self.previous_day.isoformat(), "run_id": self.previous_run}
                         if self.previous_day else None),
            "benign_verdicts": len(self.benign_ids),
            "half_life_days": settings.half_life_days,
            "cuts": {"medium": settings.medium_cut, "high": settings.high_cut, "critical": settings.critical_cut},
            "settings": formula_settings(settings),
        }
        if self.settings_changed is not None:
            section["settings_changed"] = self.settings_changed
        return section

    def changed_inputs(self, output_dir: Path, data_dir: Path) -> list[str]:
        """What changed since the inputs were read (checked just before the commit): a
        re-scored earlier day or a new verdict makes this run's own risk stale at birth."""
        reasons = []
        found = previous_risk(output_dir, self.day)
        now_day = found[0] if found else None
        if now_day != self.previous_day or _run_id(output_dir, now_day) != self.previous_run:
            reasons.append(f"{now_day or self.previous_day} was re-scored while this run computed its risk")
        # by content, not by the feedback table's part names: a compaction renames them all
        if io.benign_verdicts(data_dir) != self.benign_ids:
            reasons.append("benign verdicts changed while this run computed its risk")
        return reasons

    def stale_entries(self, output_dir: Path, data_dir: Path) -> list[StaleEntry]:
        """``risk_stale`` entries for this run's own manifest (usually none)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        changed = (self.previous_day or self.day).isoformat()
        own: list[StaleEntry] = [{"changed_day": changed, "reason": r, "marked_at": now}
                                 for r in self.changed_inputs(output_dir, data_dir)]
        return own + self.inherited_staleness(output_dir, now)

    def inherited_staleness(self, output_dir: Path, now: str) -> list[StaleEntry]:
        """One entry when the day this run carried forward is marked stale: this run's risk
        holds that day's scores, so it is as stale as they are. Without it, re-scoring D + 1
        alone while D was stale published D + 1 as current (``monitor`` stopped naming it,
        GET /users/{id}/risk said ``stale: false``) on scores a verdict had made wrong
        (found by an attack). The changed day is the earliest one named on D, where a
        ``backfill`` must start."""
        if self.previous_day is None:
            return []
        marks = [m for m in stale_marker(read_manifest(Path(output_dir), self.previous_day)) if isinstance(m, dict)]
        if not marks:
            return []
        first = min(marks, key=lambda mark: str(mark.get("changed_day")))
        reason = (f"built on the risk of {self.previous_day.isoformat()}, which is stale "
                  f"({first.get('reason')}); re-score from {first.get('changed_day')} in date order")
        return [{"changed_day": str(first.get("changed_day")), "reason": reason, "marked_at": now}]

    def mark_later_days(self, output_dir: Path, run_id: str) -> list[date]:
        """Later days carry this day's risk, so they are stale if it changed. Called by the
        run holding ``io.stale_marks_lock``, just before its commit: marked after the commit,
        a run killed in between (SIGKILL, OOM) left them unmarked for good, since re-running
        the day finds its risk unchanged (found by an attack). Killed after the marks and
        before the commit, the later days are marked although the day was not re-published:
        stale for nothing until re-scored, which is the safe side."""
        if not tables_differ(self.old_table, self.table):
            return []
        what = ("scored for the first time after them" if self.old_table is None
                else "re-scored and its risk changed")
        return mark_stale_held(output_dir, self.day + timedelta(days=1),
                               f"{self.day.isoformat()} {what} (run {run_id})", self.day)


def formula_settings(settings: RiskSettings) -> dict[str, JsonValue]:
    """Every risk setting that shapes a day's table (``history_days`` only sizes the API's
    window), as the manifest records them."""
    dumped: dict[str, JsonValue] = settings.model_dump(mode="json")
    dumped.pop("history_days", None)
    return dumped


def _recorded_settings(risk: RiskSection) -> dict[str, JsonValue]:
    """The risk settings a manifest records: all of them, or for a run from before they
    were recorded, the half-life and the cuts it always had."""
    recorded = risk.get("settings")
    if isinstance(recorded, dict):
        return recorded
    older: dict[str, JsonValue] = {}
    cuts = risk.get("cuts")
    if cuts:  # empty in a manifest from before the cuts; else all three (read_manifest checks)
        older.update(medium_cut=cuts["medium"], high_cut=cuts["high"], critical_cut=cuts["critical"])
    if "half_life_days" in risk:
        older["half_life_days"] = risk["half_life_days"]
    return older


def settings_change(previous: RunManifest | None, settings: RiskSettings, day: date) -> RiskSettingsChange | None:
    """The risk settings that differ from those the carried day was computed with, None
    when none do (or there is no carried day, or it recorded none).

    A day carries the previous table's scores into its own; computed with other settings
    (a ConfigMap edit of ``event_points`` or a cut between two nightly runs), those scores
    are on the old scale, and the mix was published without a word: the manifest recorded
    only the half-life and the cuts, and nothing compared them (found by an attack). The
    run still goes on (the operator changed them on purpose); it says which changed, in its
    manifest (``risk.settings_changed``) and in one warning with the remedy."""
    risk = previous.get("risk") if previous else None
    if previous is None or not risk:
        return None
    before = _recorded_settings(risk)
    now = formula_settings(settings)
    changes = {key: [before[key], now[key]] for key in sorted(before) if key in now and before[key] != now[key]}
    if not changes:
        return None
    since = str(previous.get("event_date"))
    listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
    log.warning("entity risk of %s carries the scores of %s, computed with other risk settings (%s): until the "
                "days from the first one you want on the new settings are re-scored in date order (uba-batch "
                "backfill --force --start ...), today's scores mix the two", day, since, listed)
    return {"since": since, "changes": changes}


def _run_id(output_dir: Path, day: date | None) -> str | None:
    if day is None:
        return None
    manifest = read_manifest(Path(output_dir), day)
    return None if manifest is None else manifest.get("run_id")


# --- analyst verdicts that change past risk ---------------------------------------


@dataclass(frozen=True)
class VerdictsRecorded:
    """A stored feedback submission and the days of entity risk its verdicts made stale."""

    summary: FeedbackSummary
    stale_days: list[date]


def record_verdicts(data_dir: Path, output_dir: Path, pending: PendingFeedback) -> VerdictsRecorded:
    """Store analysts' verdicts (``uba-batch feedback``, POST /feedback, a close) and mark
    stale the risk days they change: the marks first, then the verdicts, both under
    ``io.stale_marks_lock``, which a score run holds from its check of the verdicts to its
    commit.

    Killed anywhere, a stored verdict has its marks: killed before the store, the days
    are stale for nothing until re-scored (the safe side: the same inputs give the same
    risk). The verdicts used to be stored first and marked after, without the lock while
    searching for the days: a kill in between left the days current for good (the
    verdict counted only at a re-score nothing asked for), and a verdict on an event of a
    day whose first run had passed its check but not committed was searched for before
    that day was published and marked nowhere. Under the lock, a run either commits
    before the search (its day is found) or checks after the store (it sees the new part
    and marks itself). A watermark of the verdicts each day saw, compared by every reader,
    would also survive a kill, but every reader would have to match verdicts to days;
    here a marked manifest stays the one thing readers look at."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return _record_before_any_run(data_dir, output_dir, pending)
    with _stale_marks_turn(output_dir) as locked:
        unbenign = pending.unbenign_ids(data_dir)
        stale = _mark_verdict_days(output_dir, pending.benign_ids, unbenign) if locked else []
        summary = store_feedback(data_dir, pending, unbenign)
    return VerdictsRecorded(summary, stale)


def _record_before_any_run(data_dir: Path, output_dir: Path, pending: PendingFeedback) -> VerdictsRecorded:
    """:func:`record_verdicts` where the output directory does not exist: there is no lock
    to take (nor is one made: ``uba-batch feedback`` run where the default ``output`` is
    not must not create it), so the verdicts are stored, and the days are searched and
    marked only if the directory exists by then.

    A run makes the directory, with its date lock, before it reads any verdict, so when it
    is still missing after the store every run reads the verdicts. When it appeared in
    between, a day's first run may have read the verdicts before the store and checked
    before it too: the verdicts used to be stored without looking again, and that day was
    published current with a benign alert counted, marked nowhere (found by an attack: a
    feedback stopped between its look and its store while D's first run ran). Under the
    lock now, that run has committed (its day is found and marked) or checks after the
    store (it marks itself). Killed between the store and these marks, such a day stays
    current: a window only while the first run of an output directory is under way."""
    unbenign = pending.unbenign_ids(data_dir)
    summary = store_feedback(data_dir, pending, unbenign)
    if not output_dir.is_dir():
        return VerdictsRecorded(summary, [])
    with _stale_marks_turn(output_dir) as locked:
        stale = _mark_verdict_days(output_dir, pending.benign_ids, unbenign) if locked else []
    return VerdictsRecorded(summary, stale)


@contextmanager
def _stale_marks_turn(output_dir: Path) -> Iterator[bool]:
    """``io.stale_marks_lock`` for :func:`record_verdicts`, yielding whether the days can be
    marked. A lock that cannot be opened (an output directory not writable) is logged and
    the verdicts are still stored: they count at the next re-score."""
    with ExitStack() as stack:
        try:
            stack.enter_context(io.stale_marks_lock(output_dir))
        except UserError as exc:
            log.warning("%s: the verdicts are stored without marking the entity risk they change stale "
                        "(they count at the next re-score of its days)", exc)
            locked = False
        else:
            locked = True
        yield locked


def _mark_verdict_days(output_dir: Path, benign: Iterable[str], unbenign: Iterable[str]) -> list[date]:
    """The marks of :func:`record_verdicts`; a failure to write them is logged and the
    verdicts are stored anyway (they are the analyst's; they count at the next re-score)."""
    benign, unbenign = list(benign), list(unbenign)
    if not benign and not unbenign:
        return []
    try:
        return mark_stale_after_verdicts_held(output_dir, benign, unbenign)
    except (OSError, UserError) as exc:
        log.warning("entity risk could not be marked stale: %s; the verdicts are stored anyway "
                    "(they count at the next re-score of its days)", exc)
        return []


def record_verdicts_csv(data_dir: Path, output_dir: Path, csv_path: Path,
                        max_id_length: int = 256) -> VerdictsRecorded:
    """Store an analyst's CSV (``uba-batch feedback``) as :func:`record_verdicts` does."""
    return record_verdicts(data_dir, output_dir, pending_feedback_csv(csv_path, max_id_length))
