"""User-day alerts: a user's whole day is unusual for them, even when no single event is.

Data theft spread over many small sessions gives no event that stands out; the day
does. Each user's aggregate row of the day is compared with the user's baseline
(aggregates of the lookback strictly before the day). Counts are compared as
``ratio = today / max(usual, rate_floor)``, where ``usual`` is the user's per-active-day
rate shrunk toward the population's with ``prior_days`` pseudo-days (a user seen on
two days has a noisy rate; an unknown user gets the population's). Signals:

- ``downloads``: downloads >= ``download_ratio`` x usual (and >= ``min_downloads``);
- ``spread_downloads``: the exfiltration pattern, downloads >= ``spread_download_ratio``
  x usual *and* sessions >= ``spread_session_ratio`` x usual (with minimum counts):
  many downloads over many small sessions, none of which is remarkable alone;
- ``sessions`` / ``events``: many more sessions or events than usual;
- ``new_weekday``: activity on a weekday the user has not been active on in at least
  ``weekday_min_weeks`` weeks of history.

Multi-day signals (``uba.alerting.trends``: ``rising_downloads``, ``later_hours``,
``longer_sessions``) join the same candidates when the caller passes them: several days
in a row on the same side of the user's usual, none remarkable alone.

Minimum counts keep tiny numbers from alerting. Each fired signal contributes its
strength (ratio / limit; for the two-sided pattern the weaker of its two; 1 for the
weekday) to the day's ``day_score``, so several signals together outrank one (entity
risk, ``uba.alerting.risk``, turns it into points on the 0-100 ``risk_score`` scale). Reasons
are plain sentences, strongest first, with a parallel list of machine kinds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import polars as pl

from uba import io
from uba.alerting.trends import (
    TREND_INPUT_COLUMNS,
    TREND_KINDS,
    TREND_SCHEMA,
    population_priors,
    trend_signals,
)
from uba.features.baselines import POPULATION_USER, dow_days_col
from uba.features.protection import without_user_days
from uba.features.store import lookback_days
from uba.schema import not_called_benign, unsuppressed_alert

if TYPE_CHECKING:
    from uba.settings import Settings, TrendSettings, UserDaySettings

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
RATE_SIGNALS: tuple[tuple[str, str, str], ...] = (
    # (kind, count column in aggregates, per-active-day rate column in baselines)
    ("downloads", "n_downloads", "downloads_per_active_day"),
    ("sessions", "n_sessions", "sessions_per_active_day"),
    ("events", "n_events", "events_per_active_day"),
)
ALERT_COLUMNS = (
    "user_id", "event_date", "day_score", "reasons", "reason_kinds", "n_events", "n_sessions",
    "n_downloads", "usual_events", "usual_sessions", "usual_downloads", "days_active", "known_user",
)


def _limits(settings: UserDaySettings) -> dict[str, tuple[float, int]]:
    return {
        "downloads": (settings.download_ratio, settings.min_downloads),
        "sessions": (settings.session_ratio, settings.min_sessions),
        "events": (settings.event_ratio, settings.min_events),
    }


def _baseline_inputs(baselines: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Per-user rates and weekday history, with the population's rates on every row."""
    rates = [rate for _, _, rate in RATE_SIGNALS]
    users = baselines.filter(pl.col("user_id") != POPULATION_USER).select(
        "user_id", "days_active", "history_days", *rates,
        pl.concat_list([pl.col(dow_days_col(d)) for d in range(7)]).alias("_days_by_weekday"),
    )
    population = baselines.filter(pl.col("user_id") == POPULATION_USER).select(
        *(pl.col(rate).alias(f"pop_{rate}") for rate in rates)
    )
    return users, population


def _usual(rate: str, prior_days: float) -> pl.Expr:
    days = pl.col("days_active").fill_null(0).cast(pl.Float64)
    own = pl.col(rate).fill_null(0.0).fill_nan(0.0)
    pop = pl.col(f"pop_{rate}").fill_null(0.0).fill_nan(0.0)
    return (days * own + prior_days * pop) / (days + prior_days)


def _ratio(kind: str, count: str, floor: float) -> pl.Expr:
    return pl.col(count).cast(pl.Float64) / pl.max_horizontal(pl.col(f"usual_{kind}"), pl.lit(floor))


def _rate_reason(kind: str, count: str, ratio_limit: float, minimum: int, floor: float) -> pl.Expr:
    ratio = _ratio(kind, count, floor)
    fired = (pl.col(count) >= minimum) & (ratio >= ratio_limit)
    owner = pl.when(pl.col("known_user")).then(pl.lit("this user's")).otherwise(pl.lit("the population's"))
    text = pl.format(
        "{} {} today, {}x {} usual {} per active day",
        pl.col(count), pl.lit(kind), ratio.round(1), owner, pl.col(f"usual_{kind}").round(1),
    )
    return pl.struct(
        strength=pl.when(fired).then(ratio / ratio_limit).otherwise(0.0),
        text=text,
        kind=pl.lit(kind),
    )


def _spread_reason(settings: UserDaySettings) -> pl.Expr:
    """Downloads well above usual, spread over many more sessions than usual."""
    downloads = _ratio("downloads", "n_downloads", settings.rate_floor)
    sessions = _ratio("sessions", "n_sessions", settings.rate_floor)
    fired = (
        (pl.col("n_downloads") >= settings.spread_min_downloads)
        & (pl.col("n_sessions") >= settings.spread_min_sessions)
        & (downloads >= settings.spread_download_ratio)
        & (sessions >= settings.spread_session_ratio)
    )
    strength = pl.min_horizontal(downloads / settings.spread_download_ratio,
                                 sessions / settings.spread_session_ratio)
    text = pl.format(
        "{} downloads spread over {} sessions ({}x usual downloads, {}x usual sessions): "
        "possible data exfiltration",
        pl.col("n_downloads"), pl.col("n_sessions"), downloads.round(1), sessions.round(1),
    )
    return pl.struct(strength=pl.when(fired).then(strength).otherwise(0.0), text=text,
                     kind=pl.lit("spread_downloads"))


def _weekday_reason(settings: UserDaySettings) -> pl.Expr:
    dow = pl.col("day_of_week").cast(pl.Int64)
    weeks = (pl.col("history_days").fill_null(0) // 7).cast(pl.Int64)
    never = pl.col("_days_by_weekday").list.get(dow, null_on_oob=True).fill_null(-1) == 0
    fired = (
        never
        & (weeks >= settings.weekday_min_weeks)
        & (pl.col("days_active").fill_null(0) >= settings.weekday_min_weeks)
        & (pl.col("n_events") >= settings.weekday_min_events)
    )
    name = dow.replace_strict(list(range(7)), list(WEEKDAY_NAMES), return_dtype=pl.String, default="?")
    text = pl.format("active on a {} ({} events), a weekday this user has not been active on in {} weeks",
                     name, pl.col("n_events"), weeks)
    return pl.struct(strength=pl.when(fired).then(1.0).otherwise(0.0), text=text, kind=pl.lit("new_weekday"))


def _with_trends(day_aggregates: pl.LazyFrame, trends: pl.LazyFrame | None) -> pl.LazyFrame:
    """The day's rows with the user's fired multi-day signals (``uba.alerting.trends``; empty list if none)."""
    empty = pl.lit([], TREND_SCHEMA["trend_fired"])
    if trends is None:
        return day_aggregates.with_columns(empty.alias("trend_fired"))
    return (day_aggregates.join(trends, on="user_id", how="left")
            .with_columns(pl.col("trend_fired").fill_null(empty)))


def score_user_days(day_aggregates: pl.LazyFrame, baselines: pl.LazyFrame,
                    settings: UserDaySettings, trends: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Every user active in ``day_aggregates`` with their day's score and reasons (may be empty).

    ``trends`` (``uba.alerting.trends.trend_signals`` of the same day) adds the multi-day signals
    to the day's candidates, so they are scored, ranked and worded like the one-day ones.
    """
    users, population = _baseline_inputs(baselines)
    joined = (
        _with_trends(day_aggregates, trends).join(users, on="user_id", how="left")
        .join(population, how="cross")
        .with_columns(
            pl.col("days_active").is_not_null().alias("known_user"),
            *(_usual(rate, settings.prior_days).alias(f"usual_{kind}") for kind, _, rate in RATE_SIGNALS),
        )
    )
    limits = _limits(settings)
    one_day = [_rate_reason(kind, count, *limits[kind], settings.rate_floor) for kind, count, _ in RATE_SIGNALS]
    one_day += [_spread_reason(settings), _weekday_reason(settings)]
    names = [f"_candidate_{k}" for k in range(len(one_day))]
    strength = pl.element().struct.field("strength")
    fired = pl.any_horizontal(*(pl.col(name).struct.field("strength") > 0 for name in names),
                              pl.col("trend_fired").list.eval(strength > 0).list.any()).fill_null(False)
    rows = joined.with_columns(*(c.alias(name) for c, name in zip(one_day, names, strict=True))) \
        .with_row_index("_row").with_columns(fired.alias("_any")).cache()
    ranked = pl.concat_list([*map(pl.col, names), pl.col("trend_fired")]).list.eval(
        pl.element().sort_by(strength, descending=True, maintain_order=True)
    ).list.eval(pl.element().filter(strength > 0))
    no_reasons = pl.lit([], pl.List(pl.String))
    no_score = _day_score(pl.lit([], pl.List(pl.Float64)))  # as an empty list adds up: -0.0, not 0.0
    return (
        pl.concat([_ranked_reasons(rows.filter(pl.col("_any")), ranked),
                   rows.filter(~pl.col("_any")).with_columns(
                       no_score.alias("day_score"), no_reasons.alias("reasons"), no_reasons.alias("reason_kinds"))
                   .select(*ALERT_COLUMNS, "_row")])
        .sort("_row")
        .with_columns(
            pl.col("event_date").cast(pl.Date),
            pl.col("days_active").fill_null(0).cast(pl.Int64),
            *(pl.col(f"usual_{kind}").round(3) for kind, _, _ in RATE_SIGNALS),
        )
        .select(list(ALERT_COLUMNS))
    )


def _ranked_reasons(rows: pl.LazyFrame, ranked: pl.Expr) -> pl.LazyFrame:
    """``day_score``, ``reasons`` and ``reason_kinds`` of the user-days with a fired signal.

    Only those are ranked: a list of the candidate structs costs ~35 ms per candidate per
    15,000 rows to build (``concat_list`` of structs), and on a weekday about 1 user in 40
    fires anything; the others' day has score 0 and no reasons (``score_user_days``)."""
    return rows.with_columns(ranked.alias("_fired")).with_columns(
        _day_score(pl.col("_fired").list.eval(pl.element().struct.field("strength"))).alias("day_score"),
        pl.col("_fired").list.eval(pl.element().struct.field("text")).alias("reasons"),
        pl.col("_fired").list.eval(pl.element().struct.field("kind")).alias("reason_kinds"),
    ).select(*ALERT_COLUMNS, "_row")


def _day_score(strengths: pl.Expr) -> pl.Expr:
    """The sum of a user-day's fired strengths (strongest first), rounded."""
    return strengths.list.sum().fill_null(0.0).round(4)


def riskiest_first(user_days: FrameT) -> FrameT:
    """User-days by ``day_score``, highest first, ties by user id: the one order of user-day
    alerts, stored and shown."""
    return user_days.sort(["day_score", "user_id"], descending=[True, False])


def rank_alerts(scored: FrameT) -> FrameT:
    """The user-days that fired at least one signal, riskiest first."""
    return riskiest_first(scored.filter(pl.col("day_score") > 0))


def user_day_alerts(day_aggregates: pl.LazyFrame, baselines: pl.LazyFrame,
                    settings: UserDaySettings, trends: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Users whose day fired at least one signal, riskiest first."""
    return rank_alerts(score_user_days(day_aggregates, baselines, settings, trends))


# The event reason kind that tells the same fact as a multi-day signal.
SAME_FACT: dict[str, str] = {
    "later_hours": "hour",
    "longer_sessions": "session_length",
    "rising_downloads": "download_intensity",
}
EXPLAINED_SCHEMA = pl.Schema({"user_id": pl.String(), "event_date": pl.Date(), "kind": pl.String()})


def explained_days(output_dir: Path, data_dir: Path, days: Iterable[date]) -> pl.DataFrame:
    """``user_id, event_date, kind``: the users' days among ``days`` on which an unsuppressed,
    not-benign event alert (published ``flagged/``) already tells the fact of the multi-day
    signal ``kind`` (``SAME_FACT``: an alert with the ``hour`` reason explains that day's
    hours, ``session_length`` its session lengths, ``download_intensity`` its downloads).
    A day never scored has none."""
    benign: set[str] | None = None
    facts = pl.col("fact").replace_strict(list(SAME_FACT.values()), list(SAME_FACT), default=None)
    frames = []
    for day in sorted(set(days)):
        table = io.read_partition(output_dir, io.FLAGGED, day, "the multi-day signals read that day's alerts; "
                                  f"re-score {day.isoformat()} or restore it from a backup")
        if table is None or "reason_kinds" not in table.columns:
            continue
        alerts = table.filter(unsuppressed_alert(table.columns)).select(
            pl.col("user_id").cast(pl.String), pl.col("event_id").cast(pl.String),
            pl.col("reason_kinds").cast(pl.List(pl.String)))
        if alerts.is_empty():
            continue
        if benign is None:
            benign = io.benign_verdicts(data_dir)
        if benign:
            ids = alerts["event_id"].to_list()
            alerts = alerts.filter(not_called_benign("event", ids, benign, event_ids=True))
        frames.append(alerts.select("user_id", pl.col("reason_kinds").alias("fact")).explode("fact")
                      .select("user_id", pl.lit(day, pl.Date).alias("event_date"), facts.alias("kind"))
                      .drop_nulls("kind").unique())
    if not frames:
        return pl.DataFrame(schema=EXPLAINED_SCHEMA)
    return pl.concat(frames).sort("kind", "user_id", "event_date")


def trends_without_explained(history: pl.LazyFrame, day: date, settings: TrendSettings,
                             explained: pl.DataFrame) -> pl.LazyFrame:
    """``trend_signals`` of ``day`` with each user's signal of a kind computed without the
    user's days that ``explained`` (``explained_days``) lists for that kind: recomputed only
    for the users who have such days, the others' signals are the plain ones."""
    if explained.is_empty():
        return trend_signals(history, day, settings)
    # The lookback's aggregates are a few rows per user: read once, not once per pass
    # (four passes over the scanned files took 1.2 s instead of 0.25 s on 500 users), and
    # only the columns the signals use (7 of 45: all of them took 0.15 s for 20,000 users).
    history = history.select(TREND_INPUT_COLUMNS).collect().lazy()
    signals = trend_signals(history, day, settings)
    # the users recomputed below are a few: their variances shrink toward the whole
    # population's medians, as everyone else's do, not toward the medians among them
    priors = population_priors(history, day, settings)
    fired = pl.col("trend_fired")
    long = signals.explode("trend_fired").drop_nulls("trend_fired").with_columns(
        fired.struct.field("kind").alias("_kind"))
    parts = []
    for kind in TREND_KINDS:
        mine = explained.filter(pl.col("kind") == kind).select("user_id", "event_date")
        if mine.is_empty():
            continue
        users = mine["user_id"].unique().implode()
        long = long.filter(~((pl.col("_kind") == kind) & pl.col("user_id").is_in(users)))
        theirs = history.filter(pl.col("user_id").cast(pl.String).is_in(users))
        again = trend_signals(without_user_days(theirs, mine), day, settings, priors)
        parts.append(again.explode("trend_fired").drop_nulls("trend_fired")
                     .filter(fired.struct.field("kind") == kind)
                     .with_columns(pl.lit(kind).alias("_kind")))
    order = pl.col("_kind").replace_strict(list(TREND_KINDS), list(range(len(TREND_KINDS))))
    return (pl.concat([long, *parts]).sort(pl.col("user_id"), order)  # kinds in trend_signals' order
            .group_by("user_id", maintain_order=True).agg(fired)
            .select([pl.col(n).cast(t) for n, t in TREND_SCHEMA.items()]))


def read_trends(settings: Settings, day: date) -> pl.LazyFrame | None:
    """The multi-day signals of ``day`` from the stored aggregates of the lookback and the day
    (None when turned off or there are none). The lookback is the baselines' own, so the
    history compared with is the one the rest of scoring uses.

    With ``trend.skip_explained_days`` a user's earlier day whose fact an event alert
    already tells (``explained_days``: an alert with the ``hour`` reason for ``later_hours``,
    ``session_length`` for ``longer_sessions``, ``download_intensity`` for
    ``rising_downloads``; published under ``paths.output_dir``, not called benign) is left
    out of that signal, of its window and of its reference alike. A one-off anomaly,
    alerted and counted by entity risk, must not start a multi-day excursion of its own:
    its extreme day, even capped at ``max_day_z``, is most of a CUSUM's limit. Today's own
    alerts are not known yet (the day is scored beside it), so today always counts."""
    trend = settings.user_day.trend
    if not trend.enabled:
        return None
    earlier = lookback_days(day, settings.features.lookback_days)
    history = io.scan_aggregates(settings.paths.data_dir, [*earlier, day])
    if history is None:
        return None
    if not trend.skip_explained_days:
        return trend_signals(history, day, trend)
    explained = explained_days(Path(settings.paths.output_dir), settings.paths.data_dir, earlier)
    return trends_without_explained(history, day, trend, explained)


def stored_day_alerts(settings: Settings, day: date, baselines: pl.LazyFrame) -> tuple[pl.DataFrame, int] | None:
    """``day``'s user-day alerts from its stored aggregates against ``baselines`` (the run's
    own), and how many users were scored; None when the day has no aggregates. What
    ``score --date`` publishes under ``flagged_users/``."""
    today = io.scan_partition(settings.paths.data_dir, io.AGGREGATES, day)
    if today is None:
        return None
    today = today.with_columns(pl.lit(day, dtype=pl.Date).alias("event_date"))  # Hive path only
    scored = score_user_days(today, baselines, settings.user_day, read_trends(settings, day)).collect()
    return rank_alerts(scored), scored.height
