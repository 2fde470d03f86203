"""Multi-day user-day signals: a user's days moving away from their own history, day after day.

A slow exfiltration (a few more downloads each day) or an insider drifting to later
hours and longer sessions never makes one event, nor one day, extreme; what gives it
away is several days in a row on the same side of the user's usual, adding up.
These signals compare each of the user's recent active days with the user's own
history *before* the recent window, so a campaign running through the window does not
become its own reference (the rolling baselines would learn it within days).

For each metric of a day (from the daily aggregates, no raw events):

- ``rising_downloads``: the share of the day's events that are downloads (shown as
  counts), so a day with more activity is not mistaken for more theft;
- ``later_hours``: the day's mean hour (circular, event-weighted), as a signed offset
  from the user's usual (later is positive);
- ``longer_sessions``: the day's mean log session length (event-weighted).

Reference: the user's active days in the lookback *before* the window of
``window_days`` calendar days ending today, at least ``min_history_days`` of them.
The user's day-to-day spread there is the noise unit. A spread from a handful of days
is itself noisy, so its variance is shrunk toward the population's median variance with
``prior_days`` pseudo-days, and floored (a share's variance is at least binomial; hours
and lengths have fixed floors), so a user who happened to be steady for two weeks does
not turn small wobbles into large deviations.

The run: the user's active days within the window counted back from today while the
metric stays above the reference. With ``n`` days in the run, the days' standardised
deviations, each capped at ``max_day_z`` (one extreme day must not carry a run of
ordinary ones), are pooled as ``t = sum(min(dev / sd, max_day_z)) / sqrt(n)``
(Stouffer; it assumes independent days). Because ``sd`` is estimated, ``t`` is
compared with Student's t at one-sided level ``alpha`` with ``ref_days - 1 +
prior_days`` degrees of freedom, not with the normal quantile (with 10 days of history
the normal cut fires six times too often). The run fires when ``n >= min_days`` and
``t`` clears that critical value (downloads also need ``min_downloads`` over the run);
its strength is ``t / critical``.

The run starts over on any day at or below usual, and needs ``min_days`` of them, so a
campaign that started two days ago, or dipped for a day, is missed. Beside it, a one-sided
CUSUM over the window's active days, oldest first, ``S = max(0, S + min(z, max_day_z) -
cusum_k)``, fires at ``S >= cusum_h`` while today is still above usual (strength
``S / cusum_h``; a user back at usual is not flagged again for the days that already
fired, entity risk carries those): with the defaults one day
can add at most 2.25, so it takes at least two days well above usual, or several modestly
above, and a day below usual takes some of it back instead of resetting it. The stronger
of the two names the days in the reason; either enters ``day_score`` like every other
user-day signal. Trends are not required to be monotone (the reason says "rising" when the last
day is further out than the first): day-to-day noise would hide most real ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from uba.settings import TrendSettings

HOURS_PER_RADIAN = 24.0 / (2.0 * math.pi)
TREND_KINDS = ("rising_downloads", "later_hours", "longer_sessions")
# (kind, deviation column, value column shown in the reason)
_METRICS = (
    ("rising_downloads", "dev_downloads", "n_downloads"),  # tested on the share, shown as counts
    ("later_hours", "dev_hour", "hour"),
    ("longer_sessions", "dev_log_duration", "log_duration"),
)
TREND_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "trend_fired": pl.List(pl.Struct({"strength": pl.Float64(), "text": pl.String(), "kind": pl.String()})),
}


# The columns of the daily aggregates the signals are computed from (``_daily``).
TREND_INPUT_COLUMNS = ("user_id", "event_date", "n_events", "n_downloads", "sum_hour_sin", "sum_hour_cos",
                       "sum_log_duration")


def _daily(aggregates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per user and active day: the day's downloads, mean hour (radians) and mean log length."""
    events = pl.col("n_events").cast(pl.Float64)
    return aggregates.filter(pl.col("n_events") > 0).select(
        pl.col("user_id").cast(pl.String),
        pl.col("event_date").cast(pl.Date),
        events.alias("n_events"),
        pl.col("n_downloads").cast(pl.Float64),
        pl.col("sum_hour_sin").cast(pl.Float64),
        pl.col("sum_hour_cos").cast(pl.Float64),
        (pl.col("sum_log_duration").cast(pl.Float64) / events).alias("log_duration"),
        (pl.col("n_downloads").cast(pl.Float64) / events).alias("download_share"),
        (pl.arctan2("sum_hour_sin", "sum_hour_cos") * HOURS_PER_RADIAN % 24.0).alias("hour"),
    )


def _wrapped(hours: pl.Expr) -> pl.Expr:
    """A difference of hours of the day, in [-12, 12): 23:00 is one hour before 00:00."""
    return (hours + 12.0) % 24.0 - 12.0


def _reference(daily: pl.LazyFrame, window_start: date, settings: TrendSettings) -> pl.LazyFrame:
    """Per user, from active days before the window: means, centre hour and day-to-day variances."""
    before = daily.filter(pl.col("event_date") < window_start)
    centre = (pl.arctan2(pl.col("sum_hour_sin").sum(), pl.col("sum_hour_cos").sum()) * HOURS_PER_RADIAN % 24.0)
    per_user = (
        before.group_by("user_id").agg(
            pl.len().alias("ref_days"),
            pl.col("n_downloads").mean().alias("ref_downloads"),
            pl.col("n_events").mean().alias("ref_events"),
            (pl.col("n_downloads").sum() / pl.col("n_events").sum()).alias("ref_share"),
            pl.col("download_share").var().alias("var_downloads"),
            pl.col("log_duration").mean().alias("ref_log_duration"),
            pl.col("log_duration").var().alias("var_log_duration"),
            centre.alias("ref_hour"),
        )
        .filter(pl.col("ref_days") >= settings.min_history_days)
    )
    return _hour_variance(per_user, before)


def _hour_variance(per_user: pl.LazyFrame, before: pl.LazyFrame) -> pl.LazyFrame:
    """Day-to-day variance of the mean hour around the user's centre (wrapped offsets)."""
    offsets = before.join(per_user.select("user_id", "ref_hour"), on="user_id").with_columns(
        _wrapped(pl.col("hour") - pl.col("ref_hour")).alias("_offset"))
    spread = offsets.group_by("user_id").agg(
        ((pl.col("_offset") - pl.col("_offset").mean()) ** 2).sum().alias("_ss"),
        pl.col("_offset").mean().alias("ref_offset"),
    )
    return per_user.join(spread, on="user_id").with_columns(
        (pl.col("_ss") / (pl.col("ref_days") - 1).clip(1, None)).alias("var_hour")).drop("_ss")


VARIANCES = ("var_downloads", "var_hour", "var_log_duration")
# The population's median of each of VARIANCES, the prior the users' variances shrink toward
# (None: no user with enough history had one).
Priors = Mapping[str, float | None]


def _shrunk_sd(var: str, floor: pl.Expr, settings: TrendSettings, priors: Priors | None) -> pl.Expr:
    """sqrt of the user's variance shrunk toward the population's median, floored. The
    median is the frame's own unless ``priors`` gives it: a frame of a few users is not the
    population (``trends_without_explained``)."""
    own_weight = (pl.col("ref_days") - 1).cast(pl.Float64)
    prior = pl.col(var).median() if priors is None else pl.lit(priors[var], dtype=pl.Float64)
    pooled = (own_weight * pl.col(var).fill_null(0.0) + settings.prior_days * prior) / (
        own_weight + settings.prior_days)
    return pl.max_horizontal(pooled, floor).sqrt()


def _binomial_var(settings: TrendSettings) -> pl.Expr:
    """Sampling variance of a day's download share on a usual day, ``p (1 - p) / events``: the
    floor of the share's day-to-day variance (a user whose history happens to show the
    same share every day is not more predictable than chance allows). ``p`` is at least
    ``min_download_share``, so a user who never downloaded still has a noise unit."""
    share = pl.max_horizontal(pl.col("ref_share"), pl.lit(settings.min_download_share))
    return share * (1.0 - share) / pl.col("ref_events").clip(1.0, None)


def _noise(reference: pl.LazyFrame, settings: TrendSettings, priors: Priors | None = None) -> pl.LazyFrame:
    """The noise unit of each metric, per user (see the module doc)."""
    return reference.with_columns(
        _shrunk_sd("var_downloads", _binomial_var(settings), settings, priors).alias("sd_downloads"),
        _shrunk_sd("var_hour", pl.lit(settings.min_hour_sd ** 2), settings, priors).alias("sd_hour"),
        _shrunk_sd("var_log_duration", pl.lit(settings.min_log_duration_sd ** 2), settings,
                   priors).alias("sd_log_duration"),
    )


def _window_start(day: date, settings: TrendSettings) -> date:
    return day - timedelta(days=min(settings.window_days - 1, (day - date.min).days))  # 0001-01-01


def _daily_until(aggregates: pl.LazyFrame, day: date) -> pl.LazyFrame:
    return _daily(aggregates.filter(pl.col("event_date").cast(pl.Date) <= day))


def population_priors(aggregates: pl.LazyFrame, day: date, settings: TrendSettings) -> dict[str, float | None]:
    """The population's median day-to-day variances on ``day`` (what ``trend_signals`` shrinks
    each user's toward), from every user of ``aggregates`` with enough history."""
    reference = _reference(_daily_until(aggregates, day), _window_start(day, settings), settings)
    medians = reference.select(pl.col(v).median() for v in VARIANCES).collect(engine="in-memory").row(0)
    return dict(zip(VARIANCES, medians, strict=True))


def _window_days(daily: pl.LazyFrame, reference: pl.LazyFrame, window_start: date, day: date) -> pl.LazyFrame:
    """The users' active days of the window with each metric's deviation from their reference."""
    return (
        daily.filter((pl.col("event_date") >= window_start) & (pl.col("event_date") <= day))
        .join(reference, on="user_id")
        .with_columns(
            (pl.col("download_share") - pl.col("ref_share")).alias("dev_downloads"),
            (_wrapped(pl.col("hour") - pl.col("ref_hour")) - pl.col("ref_offset")).alias("dev_hour"),
            (pl.col("log_duration") - pl.col("ref_log_duration")).alias("dev_log_duration"),
        )
    )


_SAME_USER = "_same_user"  # the row before is the same user's (``_active_today``)


def _active_today(window: pl.LazyFrame, day: date) -> pl.DataFrame:
    """The window of the users active on ``day`` (only they can fire), sorted by user and date,
    with whether the row before is the same user's (for ``_running``).

    Materialised once: the three metrics read it, and Polars would otherwise plan the
    window, the reference and their shared scan again in each metric's branch (three times
    the work; this query runs in the driver beside the shards, on their cores). With the
    in-memory engine: the streaming one adds a user's float sums (the reference's means
    and variances) in an order that varies from run to run, so the last bits of a
    signal's strength did too."""
    today = pl.col("event_date") == day
    user = pl.col("user_id")
    active = window.filter(today.any().over("user_id")).sort(["user_id", "event_date"])
    return active.with_columns((user == user.shift(1)).fill_null(False).alias(_SAME_USER)).collect(engine="in-memory")


@dataclass(frozen=True)
class _Places:
    """Where each row of a window sorted by user and date sits: its user's number (0, 1, ...)
    and its place among that user's rows (0 for the oldest)."""

    user: np.ndarray
    place: np.ndarray
    users: int
    longest: int  # the most rows of one user

    @classmethod
    def of(cls, window: pl.DataFrame) -> _Places:
        first = ~window[_SAME_USER].to_numpy()
        user = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        place = np.arange(len(window)) - starts[user]
        return cls(user, place, len(starts), int(place.max()) + 1 if len(place) else 0)


def _running(values: np.ndarray, places: _Places, step: np.ufunc) -> np.ndarray:
    """Each row's running value over its user's rows, oldest first: ``values`` on the
    user's first row, then ``step(running value of the row before, row's value)``. The
    same operations in the same order as ``cum_sum``/``cum_min().over("user_id")``, so
    the same bits, but on a (users x rows) table, one column at a time: Polars evaluates
    ``over`` user by user, about 1.5 us per user and expression, which was most of the
    trends' time on a day with 15,000 active users."""
    table = np.zeros((places.users, places.longest), dtype=values.dtype)
    table[places.user, places.place] = values
    for column in range(1, places.longest):
        table[:, column] = step(table[:, column - 1], table[:, column])
    running: np.ndarray = table[places.user, places.place]
    return running


def _trailing_product(values: np.ndarray, places: _Places) -> np.ndarray:
    """``cum_prod(reverse=True).over("user_id")`` of integers, as ``_running`` computes
    running values: each row's product of its own and its user's later rows' values."""
    table = np.ones((places.users, places.longest), dtype=values.dtype)  # a user's missing later rows: 1
    table[places.user, places.place] = values
    for column in range(places.longest - 2, -1, -1):
        table[:, column] *= table[:, column + 1]
    product: np.ndarray = table[places.user, places.place]
    return product


def _plain(column: pl.Series) -> bool:
    """No null, NaN or infinity: where ``cum_sum`` and ``cum_min`` skip or order values
    their own way, the running values are left to them (``_scored_window``)."""
    return column.null_count() == 0 and bool(column.is_finite().all())


def _scored_window(window: pl.DataFrame, dev: str, max_day_z: float, cusum_k: float) -> pl.LazyFrame:
    """The window's rows (sorted by user and date, users active today only) with each day's
    capped z, the user's CUSUM after that day, and whether the day belongs to the trailing
    run (above usual) and to the CUSUM's current excursion (days since it last stood at
    zero). Both trailing flags are products taken from the newest day back."""
    sd = dev.replace("dev_", "sd_")
    day_z = (pl.col(dev) / pl.col(sd)).clip(None, max_day_z)
    scored = window.with_columns(day_z.alias("_z"), (day_z - cusum_k).alias("_climb"),
                                 (pl.col(dev) > 0).cast(pl.Int64).alias("_above"))
    if not _plain(scored["_z"]):
        return _scored_by_polars(scored.lazy())
    places = _Places.of(scored)
    climb = _running(scored["_climb"].to_numpy(), places, np.add)
    scored = scored.with_columns(pl.Series("_c", climb), pl.Series("_low", _running(climb, places, np.minimum)))
    scored = scored.with_columns((pl.col("_c") - pl.min_horizontal(pl.col("_low"), pl.lit(0.0))).alias("_cusum"))
    positive = (scored["_cusum"] > 0).cast(pl.Int64).to_numpy()
    return scored.with_columns(
        pl.Series("_in_run", _trailing_product(scored["_above"].to_numpy(), places)),
        pl.Series("_in_excursion", _trailing_product(positive, places)),
    ).lazy()


def _scored_by_polars(scored: pl.LazyFrame) -> pl.LazyFrame:
    """``_scored_window`` with Polars' window functions, for values ``_running`` leaves to them."""
    climb = pl.col("_climb").cum_sum().over("user_id")
    cusum = pl.col("_c") - pl.min_horizontal(pl.col("_c").cum_min().over("user_id"), pl.lit(0.0))
    return scored.with_columns(climb.alias("_c")).with_columns(cusum.alias("_cusum")).with_columns(
        pl.col("_above").cum_prod(reverse=True).over("user_id").alias("_in_run"),
        (pl.col("_cusum") > 0).cast(pl.Int64).cum_prod(reverse=True).over("user_id").alias("_in_excursion"),
    )


def _runs(window: pl.DataFrame, kind: str, dev: str, value: str, settings: TrendSettings) -> pl.LazyFrame:
    """Per user active today, two views of this metric's recent days, pooled:

    - the run: the days (newest back) with the metric above usual, as a Stouffer sum of
      z over sqrt(days);
    - the CUSUM: ``S = max(0, S + z - cusum_k)`` over the window's active days, oldest
      first, and the days of its current excursion (a drift that dips below usual for a
      day does not start over, and a day barely above usual does not add up).

    Each day's z is capped at ``max_day_z`` in both: the signal is about several days
    agreeing, and one extreme day (already the one-day signals' and the event model's
    business) must not carry a "run" of otherwise ordinary days.
    """
    run, excursion = pl.col("_in_run") == 1, pl.col("_in_excursion") == 1
    n = run.sum()
    scored = _scored_window(window, dev, settings.max_day_z, settings.cusum_k)
    return scored.group_by("user_id", maintain_order=True).agg(
        pl.lit(kind).alias("kind"),
        n.alias("n"),
        (pl.col("_z").filter(run).sum() / n.clip(1, None).cast(pl.Float64).sqrt()).alias("z"),
        pl.col(value).filter(run).alias("values"),
        pl.col(dev).filter(run).alias("devs"),
        pl.col("_cusum").last().alias("cusum"),
        pl.col(value).filter(excursion).alias("cusum_values"),
        *(pl.col(c).first() for c in ("ref_downloads", "ref_hour", "ref_offset", "ref_log_duration", "ref_days")),
    )


def _clock(hours: pl.Expr) -> pl.Expr:
    """Hours of the day as ``HH:MM``."""
    minutes = (hours * 60.0).round().cast(pl.Int64) % (24 * 60)
    return pl.format("{}:{}", (minutes // 60).cast(pl.String).str.zfill(2),
                     (minutes % 60).cast(pl.String).str.zfill(2))


def _minutes(log_duration: pl.Expr) -> pl.Expr:
    """A mean log1p(seconds) back to a typical session length in minutes (geometric mean)."""
    return ((log_duration.exp() - 1.0) / 60.0).round(1)


def _values_text(kind: str, values: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(the days' values, the usual value) as text, in the metric's own unit."""
    if kind == "rising_downloads":
        return (values.list.eval(pl.element().cast(pl.Int64).cast(pl.String)).list.join(", "),
                pl.col("ref_downloads").round(1).cast(pl.String))
    if kind == "later_hours":
        return (values.list.eval(_clock(pl.element())).list.join(", "),
                _clock(pl.col("ref_hour") + pl.col("ref_offset")))
    return (values.list.eval(_minutes(pl.element()).cast(pl.String)).list.join(", ") + pl.lit(" min"),
            _minutes(pl.col("ref_log_duration")).cast(pl.String) + pl.lit(" min"))


_PHRASES = {
    "rising_downloads": "downloads above usual",
    "later_hours": "active later than usual (mean hour)",
    "longer_sessions": "sessions longer than usual (typical length)",
}


def _critical(df: pl.Expr, alpha: float) -> pl.Expr:
    """One-sided critical value of Student's t with ``df`` degrees of freedom at level ``alpha``.

    The noise unit is estimated from the user's own few days, so the pooled statistic is
    t- rather than normally distributed: with 10 days of history, z > 3.09 happens 6 times
    as often as the nominal 0.1%. The degrees of freedom are the user's days minus one
    plus the ``prior_days`` the variance was shrunk with. Computed once per distinct
    ``df`` (a few dozen, whole days plus the prior): the quantile is an iterative search,
    ~0.7 us a row, and a weekday has three rows for each of 15,000 users.
    """
    from scipy.special import stdtrit  # scipy.stats costs a second per process

    def quantiles(degrees: pl.Series) -> pl.Series:
        distinct, where = np.unique(degrees.to_numpy(), return_inverse=True)
        return pl.Series(stdtrit(distinct, 1.0 - alpha)[where])

    return df.map_batches(quantiles, return_dtype=pl.Float64)


def _reason(kind: str, settings: TrendSettings) -> pl.Expr:
    """The fired signal as a struct of strength, sentence and kind (strength 0 when not fired).

    The run fires at ``t >= critical`` (strength ``t / critical``), the CUSUM at
    ``cusum >= cusum_h`` with today above usual (strength ``cusum / cusum_h``); the
    stronger one names the days."""
    run_fired = (pl.col("n") >= settings.min_days) & (pl.col("z") >= pl.col("critical"))
    cusum_fired = (pl.col("cusum") >= settings.cusum_h) & (pl.col("n") >= 1)  # still above usual today
    if kind == "rising_downloads":
        run_fired = run_fired & (pl.col("values").list.sum() >= settings.min_downloads)
        cusum_fired = cusum_fired & (pl.col("cusum_values").list.sum() >= settings.min_downloads)
    run_strength = pl.when(run_fired).then(pl.col("z") / pl.col("critical")).otherwise(0.0)
    cusum_strength = pl.when(cusum_fired).then(pl.col("cusum") / settings.cusum_h).otherwise(0.0)
    by_run = run_strength >= cusum_strength
    values, usual = _values_text(kind, pl.when(by_run).then(pl.col("values")).otherwise(pl.col("cusum_values")))
    rising = pl.when(pl.col("devs").list.last() > pl.col("devs").list.first()).then(pl.lit(", rising")).otherwise(
        pl.lit(""))
    run_text = pl.format("{} for {} active days running{}: {} vs usually {} (t {} over {} earlier active days)",
                         pl.lit(_PHRASES[kind]), pl.col("n"), rising, values, usual, pl.col("z").round(1),
                         pl.col("ref_days"))
    cusum_text = pl.format("{}, adding up over the last {} active days: {} vs usually {} (CUSUM {} sd over {} "
                           "earlier active days)", pl.lit(_PHRASES[kind]), pl.col("cusum_values").list.len(), values,
                           usual, pl.col("cusum").round(1), pl.col("ref_days"))
    return pl.struct(strength=pl.max_horizontal(run_strength, cusum_strength),
                     text=pl.when(by_run).then(run_text).otherwise(cusum_text), kind=pl.lit(kind))


def trend_signals(aggregates: pl.LazyFrame, day: date, settings: TrendSettings,
                  priors: Priors | None = None) -> pl.LazyFrame:
    """``user_id, trend_fired`` (``TREND_SCHEMA``): the multi-day signals each user fired on ``day``.

    ``aggregates`` holds daily aggregates of the lookback and of ``day`` itself (other
    days are ignored). Users without enough history, or with nothing fired, are absent.
    ``priors`` (``population_priors``) when ``aggregates`` holds only some of the users.
    """
    window_start = _window_start(day, settings)
    # the window, the reference and the reference's hour offsets all read the daily rows:
    # cached, the stored days are scanned once, not three times
    daily = _daily_until(aggregates, day).cache()
    reference = _noise(_reference(daily, window_start, settings), settings, priors)
    window = _active_today(_window_days(daily, reference, window_start, day), day)
    runs = pl.concat([_runs(window, kind, dev, value, settings) for kind, dev, value in _METRICS])
    runs = runs.with_columns(
        _critical((pl.col("ref_days") - 1).cast(pl.Float64) + settings.prior_days, settings.alpha).alias("critical"))
    reasons = pl.concat([
        runs.filter(pl.col("kind") == kind).select("user_id", _reason(kind, settings).alias("signal"))
        for kind in TREND_KINDS
    ])
    return (reasons.filter(pl.col("signal").struct.field("strength") > 0)
            .group_by("user_id").agg(pl.col("signal").alias("trend_fired"))
            .select([pl.col(n).cast(t) for n, t in TREND_SCHEMA.items()]))
