"""User baselines for a date D: what is normal for each user, from aggregates before D.

A contextual anomaly is only visible against the user's own habits, so every event is
compared with a baseline row of its user: typical session length and action count
(log space), typical hours (circular, so 23:00 and 01:00 are close), device and
event-type mix, hour and weekday shares, activity rates and how much history backs
all of that. The frame also carries one population row (``POPULATION_USER``) that
serves unknown users and is the prior every user is shrunk toward.

Shrinkage (empirical Bayes in spirit): a user seen on few days has noisy statistics,
so moments are blended with the population with weight
``w = days_active / (days_active + prior_strength_days)``, and category shares get
``prior_strength_events`` pseudo-events distributed like the population's. Spreads
have floors so a perfectly regular user does not turn small wobbles into huge z-scores.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from uba.features.aggregates import (
    FLOAT_SUM_COLUMNS,
    HOUR_RADIANS,
    HOURS,
    WEEKDAYS,
    categories_in,
    device_col,
    event_col,
    exact_sum,
    hour_col,
)
from uba.settings import FeatureSettings

POPULATION_USER = "__population__"
MAX_HOUR_SPREAD = 12.0
USUAL_HOURS_COVERAGE = 0.9  # the "usual hours" window holds this share of a user's events
_MIN_RESULTANT = 1e-12
_FLOAT_RESOLUTION = 1e-12
_HOURS_PER_RADIAN = 1.0 / HOUR_RADIANS


def smoothed_hour_col(hour: int) -> str:
    return f"sm_hour_{hour:02d}"


def _smoothed_hours() -> list[pl.Expr]:
    """Hour counts spread 1/4 to each neighbouring hour (circularly), total unchanged.

    Activity at 09:00 and 11:00 makes 10:00 unsurprising; without this, a user whose
    events happen to skip an hour inside their working day would get a "rare hour"
    there, while the hour deviation already handles real distance.
    """
    def count(h: int) -> pl.Expr:
        return pl.col(hour_col(h % 24)).cast(pl.Float64)

    return [
        (0.5 * count(h) + 0.25 * count(h - 1) + 0.25 * count(h + 1)).alias(smoothed_hour_col(h))
        for h in HOURS
    ]


def dow_count_col(day: int) -> str:
    return f"n_dow_{day}"


def dow_days_col(day: int) -> str:
    return f"days_active_dow_{day}"


def rarity_col(kind: str, name: str | int) -> str:
    """How much rarer the category is for the user than for the population, in nats (>= 0)."""
    return f"rarity_{kind}_{name}"


def share_col(kind: str, name: str | int) -> str:
    """Raw (unshrunk) share of a category in the user's events: ``share_device_mobile``."""
    return f"share_{kind}_{name}"


def prob_col(kind: str, name: str | int) -> str:
    """Shrunk share used for rarity: ``p_device_mobile``, ``p_hour_03``, ``p_dow_5``."""
    return f"p_{kind}_{name}"


def hour_label(hour: int) -> str:
    return f"{hour:02d}"


def _window(aggregates: pl.LazyFrame, as_of: date, lookback_days: int) -> pl.LazyFrame:
    """Aggregates of [as_of - lookback_days, as_of): nothing on or after the scored day."""
    start = as_of - timedelta(days=lookback_days)
    day = pl.col("event_date").cast(pl.Date)
    return aggregates.filter((day >= start) & (day < as_of))


def _count_columns(schema: pl.Schema) -> tuple[list[str], list[str]]:
    return categories_in(schema, "n_device_"), categories_in(schema, "n_event_")


def _category_specs(devices: list[str], events: list[str]) -> list[tuple[str, str, str]]:
    """(kind, label, count column) for every category share a baseline carries."""
    specs = [("device", d, device_col(d)) for d in devices]
    specs += [("event", e, event_col(e)) for e in events]
    specs += [("hour", hour_label(h), smoothed_hour_col(h)) for h in HOURS]
    specs += [("dow", str(d), dow_count_col(d)) for d in WEEKDAYS]
    return specs


def _per_user_sums(window: pl.LazyFrame, devices: list[str], events: list[str]) -> pl.LazyFrame:
    """Roll the daily rows of each user up into window totals (all additive)."""
    counts = [hour_col(h) for h in HOURS] + [device_col(d) for d in devices]
    counts += [event_col(e) for e in events]
    dow = pl.col("day_of_week").cast(pl.Int64)
    return window.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("days_active"),
        pl.col("event_date").cast(pl.Date).min().alias("first_active"),
        pl.col("event_date").cast(pl.Date).max().alias("last_active"),
        pl.col("n_events", "n_sessions", "n_downloads").sum().cast(pl.Int64),
        pl.col("max_events_in_session").max().cast(pl.Int64),
        *(exact_sum(pl.col(c)).alias(c) for c in FLOAT_SUM_COLUMNS),
        *(pl.col(c).fill_null(0).sum().cast(pl.Int64).alias(c) for c in counts),
        *(pl.col("n_events").filter(dow == d).sum().cast(pl.Int64).alias(dow_count_col(d))
          for d in WEEKDAYS),
        *((dow == d).sum().cast(pl.Int64).alias(dow_days_col(d)) for d in WEEKDAYS),
    )


def _within_ss(stat: str) -> pl.Expr:
    """Sum of squared deviations from the user's own mean (0 for a single event).

    Differences below the float resolution of the sums are rounding, not spread, and
    count as exactly 0 (a perfectly regular user has spread 0, then the floor).
    """
    n = pl.col("n_events").cast(pl.Float64)
    sumsq = pl.col(f"sumsq_{stat}")
    ss = sumsq - pl.col(f"sum_{stat}") ** 2 / n
    return pl.when(ss > sumsq.abs() * _FLOAT_RESOLUTION).then(ss).otherwise(0.0)


def _circular_spread_hours(cos_mean: pl.Expr, sin_mean: pl.Expr) -> pl.Expr:
    """Circular standard deviation sqrt(-2 ln R) in hours, capped at 12 (no preferred hour)."""
    resultant = (cos_mean**2 + sin_mean**2).sqrt().clip(_MIN_RESULTANT, 1.0)
    resultant = pl.when(resultant > 1.0 - _FLOAT_RESOLUTION).then(1.0).otherwise(resultant)
    spread = (resultant.log() * -2.0).abs().sqrt() * _HOURS_PER_RADIAN  # abs: no -0.0
    return spread.clip(0.0, MAX_HOUR_SPREAD)


def _circular_mean_hours(cos_mean: pl.Expr, sin_mean: pl.Expr) -> pl.Expr:
    return (pl.arctan2(sin_mean, cos_mean) * _HOURS_PER_RADIAN) % 24.0


def _user_moments() -> list[pl.Expr]:
    """Per-user (unshrunk) moments from the rolled-up sums."""
    n = pl.col("n_events").cast(pl.Float64)
    out = []
    for stat in ("log_duration", "log_actions"):
        var = pl.when(n > 1).then(_within_ss(stat) / (n - 1)).otherwise(0.0)
        out += [(pl.col(f"sum_{stat}") / n).alias(f"raw_mean_{stat}"), var.alias(f"raw_var_{stat}")]
    out += [
        (pl.col("sum_hour_cos") / n).alias("_cos_mean"),
        (pl.col("sum_hour_sin") / n).alias("_sin_mean"),
    ]
    return out


def _population_sums(users: pl.LazyFrame, devices: list[str], events: list[str]) -> pl.LazyFrame:
    """One row of window totals plus the pooled within-user variances used as priors."""
    counts = [count for _, _, count in _category_specs(devices, events)]
    counts += [hour_col(h) for h in HOURS]  # raw hours, for the population's usual-hours window
    dof = (pl.col("n_events") - 1).clip(0, None).cast(pl.Float64)
    user_spread = _circular_spread_hours(pl.col("_cos_mean"), pl.col("_sin_mean"))
    return users.select(
        pl.len().cast(pl.Int64).alias("n_users"),
        pl.col("days_active").sum().alias("user_days"),
        pl.col("first_active").min(),
        pl.col("last_active").max(),
        pl.col("n_events", "n_sessions", "n_downloads").sum().cast(pl.Int64),
        pl.col("max_events_in_session").max(),
        *(exact_sum(pl.col(c)).alias(c) for c in FLOAT_SUM_COLUMNS),
        *(pl.col(c).sum().alias(c) for c in counts),  # integers or quarter-integers: exact
        exact_sum(_within_ss("log_duration")).alias("within_ss_log_duration"),
        exact_sum(_within_ss("log_actions")).alias("within_ss_log_actions"),
        exact_sum(dof * user_spread**2).alias("within_ss_hour"),
        dof.sum().alias("within_dof"),
    )


def _smoothed_population_shares(specs: list[tuple[str, str, str]]) -> list[pl.Expr]:
    """Population shares with one pseudo-event per category, so no share is exactly 0."""
    n = pl.col("n_events").cast(pl.Float64)
    size = {kind: float(sum(1 for k, _, _ in specs if k == kind)) for kind, _, _ in specs}
    return [
        ((pl.col(count).cast(pl.Float64) + 1.0) / (n + size[kind])).alias(f"pop_{prob_col(kind, label)}")
        for kind, label, count in specs
    ]


def _population_stats(pop: pl.LazyFrame, devices: list[str], events: list[str],
                      features: FeatureSettings) -> pl.LazyFrame:
    """Population moments (total spread for unknown users, pooled within-user spread as prior)."""
    n = pl.col("n_events").cast(pl.Float64)
    dof = pl.col("within_dof")
    shares = _smoothed_population_shares(_category_specs(devices, events))
    moments = []
    for stat in ("log_duration", "log_actions"):
        total_var = pl.when(n > 1).then(_within_ss(stat) / (n - 1)).otherwise(0.0)
        within = pl.when(dof > 0).then(pl.col(f"within_ss_{stat}") / dof).otherwise(total_var)
        moments += [
            (pl.col(f"sum_{stat}") / n).alias(f"pop_mean_{stat}"),
            total_var.alias(f"pop_var_{stat}"),
            within.alias(f"pop_within_var_{stat}"),
        ]
    cos_mean, sin_mean = pl.col("sum_hour_cos") / n, pl.col("sum_hour_sin") / n
    total_hour_var = _circular_spread_hours(cos_mean, sin_mean) ** 2
    moments += [
        cos_mean.alias("pop_cos_mean"),
        sin_mean.alias("pop_sin_mean"),
        pl.when(dof > 0).then(pl.col("within_ss_hour") / dof).otherwise(total_hour_var)
        .alias("pop_within_var_hour"),
    ]
    return pop.with_columns(*moments, *shares)


def _with_usual_hours(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add the shortest circular run of hours holding USUAL_HOURS_COVERAGE of the events.

    Used only to phrase reasons ("outside this user's usual 09:00-17:00"): start hour
    and length in hours; the earliest start wins ties so the result is deterministic.
    Built in stages (prefix sums, then per-length best windows) so every expression
    refers to materialised columns instead of repeating a large sub-expression.
    """
    doubled = pl.concat_list([pl.col(hour_col(h)) for h in HOURS + HOURS])
    staged = frame.with_columns(
        _prefix=pl.concat_list([pl.lit(0, pl.Int64), doubled.list.eval(pl.element().cum_sum())]),
        _need=pl.col("n_events").cast(pl.Float64) * USUAL_HOURS_COVERAGE - 1e-9,
    )
    lengths = range(1, 25)
    covered = {
        k: pl.col("_prefix").list.slice(k, 24) - pl.col("_prefix").list.slice(0, 24) for k in lengths
    }
    staged = staged.with_columns(
        *(covered[k].list.max().cast(pl.Float64).alias(f"_best_{k}") for k in lengths),
        *(covered[k].list.arg_max().cast(pl.Int64).alias(f"_start_{k}") for k in lengths),
    ).with_columns(
        usual_hour_length=pl.coalesce(
            [pl.when(pl.col(f"_best_{k}") >= pl.col("_need")).then(pl.lit(k, pl.Int64)) for k in lengths]
        ),
    ).with_columns(
        usual_hour_start=pl.coalesce(
            [pl.when(pl.col("usual_hour_length") == k).then(pl.col(f"_start_{k}")) for k in lengths]
        ),
    )
    scratch = ["_prefix", "_need", *(f"_best_{k}" for k in lengths), *(f"_start_{k}" for k in lengths)]
    return staged.drop(scratch)


def _shrunk_shares(specs: list[tuple[str, str, str]], alpha: float) -> list[pl.Expr]:
    """Raw shares and Dirichlet-smoothed shares (alpha pseudo-events shaped like the population).

    Hours get no raw share column: reasons phrase hours through the usual-hours window.
    """
    n = pl.col("n_events").cast(pl.Float64)
    out = [((n + alpha) / alpha).log().alias("unseen_rarity")]
    for kind, label, count_name in specs:
        count = pl.col(count_name).cast(pl.Float64)
        pop = pl.col(f"pop_{prob_col(kind, label)}")
        shrunk = (count + alpha * pop) / (n + alpha)
        out.append(shrunk.alias(prob_col(kind, label)))
        out.append((pop / shrunk).log().clip(0.0, None).alias(rarity_col(kind, label)))
        if kind != "hour":
            out.append((count / n).alias(share_col(kind, label)))
    return out


def _population_reference() -> list[pl.Expr]:
    """Population mean/spread copied into every row, for the row-local "extreme for anyone" check."""
    out = []
    for stat in ("log_duration", "log_actions"):
        out += [
            pl.col(f"pop_mean_{stat}").alias(f"pop_mean_{stat}"),
            pl.col(f"pop_var_{stat}").sqrt().alias(f"pop_sd_{stat}"),
        ]
    return out


def _user_rows(users: pl.LazyFrame, pop: pl.LazyFrame, as_of: date, devices: list[str],
               events: list[str], features: FeatureSettings) -> pl.LazyFrame:
    """Shrink each user's statistics toward the population and floor the spreads."""
    prior = features.prior_strength_days
    alpha = features.prior_strength_events
    w = pl.col("shrink_weight")
    joined = _with_usual_hours(users).join(
        pop.select(pl.selectors.starts_with("pop_")), how="cross"
    ).with_columns(
        shrink_weight=pl.col("days_active").cast(pl.Float64)
        / (pl.col("days_active").cast(pl.Float64) + prior),
    )
    moments = []
    for stat in ("log_duration", "log_actions"):
        mean = w * pl.col(f"raw_mean_{stat}") + (1 - w) * pl.col(f"pop_mean_{stat}")
        var = w * pl.col(f"raw_var_{stat}") + (1 - w) * pl.col(f"pop_within_var_{stat}")
        moments += [
            mean.alias(f"mean_{stat}"),
            var.sqrt().clip(features.min_log_spread, None).alias(f"sd_{stat}"),
            pl.col(f"raw_var_{stat}").sqrt().alias(f"raw_sd_{stat}"),
        ]
    user_spread = _circular_spread_hours(pl.col("_cos_mean"), pl.col("_sin_mean"))
    cos_mix = w * pl.col("_cos_mean") + (1 - w) * pl.col("pop_cos_mean")
    sin_mix = w * pl.col("_sin_mean") + (1 - w) * pl.col("pop_sin_mean")
    hour_var = w * user_spread**2 + (1 - w) * pl.col("pop_within_var_hour")
    moments += [
        _circular_mean_hours(pl.col("_cos_mean"), pl.col("_sin_mean")).alias("raw_hour_mean"),
        user_spread.alias("raw_hour_spread"),
        _circular_mean_hours(cos_mix, sin_mix).alias("hour_mean"),
        hour_var.sqrt().clip(features.min_hour_spread, MAX_HOUR_SPREAD).alias("hour_spread"),
    ]
    return joined.with_columns(
        *moments,
        *_shrunk_shares(_category_specs(devices, events), alpha),
        *_population_reference(),
        *_activity(as_of, pl.col("first_active"), pl.col("days_active")),
    )


def _activity(as_of: date, first_active: pl.Expr, days_active: pl.Expr) -> list[pl.Expr]:
    """History length and per-day rates (what user-day alerts compare a whole day with)."""
    history = (pl.lit(as_of, pl.Date) - first_active).dt.total_days().cast(pl.Int64)
    active = days_active.cast(pl.Float64)
    return [
        history.alias("history_days"),
        (pl.col("n_events") / history.cast(pl.Float64)).alias("events_per_day"),
        (pl.col("n_events") / active).alias("events_per_active_day"),
        (pl.col("n_sessions") / active).alias("sessions_per_active_day"),
        (pl.col("n_downloads") / active).alias("downloads_per_active_day"),
    ]


def _population_row(pop: pl.LazyFrame, as_of: date, devices: list[str], events: list[str],
                    features: FeatureSettings) -> pl.LazyFrame:
    """The population as a baseline row: total spreads, since an unknown user could be anyone."""
    n = pl.col("n_events").cast(pl.Float64)
    user_days = pl.col("user_days").cast(pl.Float64)
    cos_mean, sin_mean = pl.col("pop_cos_mean"), pl.col("pop_sin_mean")
    exprs = [
        pl.lit(POPULATION_USER, pl.String).alias("user_id"),
        pl.lit(1.0).alias("shrink_weight"),
        pl.lit(0.0).alias("unseen_rarity"),
        *_population_reference(),
        pl.col("active_dates").alias("days_active"),
    ]
    for stat in ("log_duration", "log_actions"):
        sd = pl.col(f"pop_var_{stat}").sqrt()
        exprs += [
            pl.col(f"pop_mean_{stat}").alias(f"raw_mean_{stat}"),
            sd.alias(f"raw_sd_{stat}"),
            pl.col(f"pop_mean_{stat}").alias(f"mean_{stat}"),
            sd.clip(features.min_log_spread, None).alias(f"sd_{stat}"),
        ]
    spread = _circular_spread_hours(cos_mean, sin_mean)
    exprs += [
        _circular_mean_hours(cos_mean, sin_mean).alias("raw_hour_mean"),
        spread.alias("raw_hour_spread"),
        _circular_mean_hours(cos_mean, sin_mean).alias("hour_mean"),
        spread.clip(features.min_hour_spread, MAX_HOUR_SPREAD).alias("hour_spread"),
    ]
    for kind, label, count in _category_specs(devices, events):
        exprs.append(pl.col(f"pop_{prob_col(kind, label)}").alias(prob_col(kind, label)))
        exprs.append(pl.lit(0.0).alias(rarity_col(kind, label)))
        if kind != "hour":
            exprs.append((pl.col(count) / n).alias(share_col(kind, label)))
    history = (pl.lit(as_of, pl.Date) - pl.col("first_active")).dt.total_days().cast(pl.Int64)
    exprs += [
        history.alias("history_days"),
        (n / (pl.col("n_users").cast(pl.Float64) * history.cast(pl.Float64))).alias("events_per_day"),
        (n / user_days).alias("events_per_active_day"),
        (pl.col("n_sessions") / user_days).alias("sessions_per_active_day"),
        (pl.col("n_downloads") / user_days).alias("downloads_per_active_day"),
    ]
    return _with_usual_hours(pop).with_columns(exprs)


def baseline_columns(devices: list[str], events: list[str]) -> list[str]:
    """Ordered columns of the baselines frame (the snapshot format the API reads)."""
    cols = [
        "user_id", "as_of", "history_days", "days_active", "shrink_weight",
        "n_events", "n_sessions", "n_downloads", "max_events_in_session",
        "events_per_day", "events_per_active_day", "sessions_per_active_day",
        "downloads_per_active_day",
    ]
    for stat in ("log_duration", "log_actions"):
        cols += [f"raw_mean_{stat}", f"raw_sd_{stat}", f"mean_{stat}", f"sd_{stat}"]
        cols += [f"pop_mean_{stat}", f"pop_sd_{stat}"]
    cols += ["raw_hour_mean", "raw_hour_spread", "hour_mean", "hour_spread",
             "usual_hour_start", "usual_hour_length", "unseen_rarity"]
    for kind, label, _ in _category_specs(devices, events):
        if kind != "hour":
            cols.append(share_col(kind, label))
        cols += [prob_col(kind, label), rarity_col(kind, label)]
    cols += [dow_days_col(d) for d in WEEKDAYS]
    return cols


def user_baselines(aggregates: pl.LazyFrame, as_of: date, features: FeatureSettings) -> pl.LazyFrame:
    """One baseline row per user active in [as_of - lookback_days, as_of), plus the population row.

    Only aggregate rows strictly before ``as_of`` are used, whatever ``aggregates`` holds,
    so a day is never scored against a baseline that already contains it. The
    population row is present even with no history (its statistics are then null/NaN
    and the event features treat them as "no information").
    """
    window = _window(aggregates, as_of, features.lookback_days)
    devices, events = _count_columns(window.collect_schema())
    users = _per_user_sums(window, devices, events).with_columns(*_user_moments(), *_smoothed_hours())
    pop = _population_stats(_population_sums(users, devices, events), devices, events, features)
    pop_days = window.select(
        pl.col("event_date").n_unique().cast(pl.Int64).alias("active_dates"),
        *(pl.col("event_date").filter(pl.col("day_of_week").cast(pl.Int64) == d).n_unique()
          .cast(pl.Int64).alias(dow_days_col(d)) for d in WEEKDAYS)
    )
    user_rows = _user_rows(users, pop, as_of, devices, events, features)
    pop_row = _population_row(pop.join(pop_days, how="cross"), as_of, devices, events, features)
    columns = baseline_columns(devices, events)
    stamp = pl.lit(as_of, pl.Date).alias("as_of")
    frames = [f.with_columns(stamp).select(columns) for f in (user_rows, pop_row)]
    return pl.concat(frames, how="vertical_relaxed").sort(
        pl.col("user_id") == POPULATION_USER, "user_id"
    )

