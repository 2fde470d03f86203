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
``prior_strength_sessions`` pseudo-sessions distributed like the population's. Spreads
have floors so a perfectly regular user does not turn small wobbles into huge z-scores.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from uba.features.aggregates import (
    CROSS_COLUMN,
    DOWNLOAD,
    FLOAT_SUM_COLUMNS,
    HOUR_RADIANS,
    HOURS,
    WEEKDAYS,
    categories_in,
    device_col,
    event_col,
    exact_sum,
    fixed_point,
    from_fixed_point,
    hour_col,
)

if TYPE_CHECKING:
    from uba.settings import FeatureSettings

POPULATION_USER = "__population__"
MAX_HOUR_SPREAD = 12.0
USUAL_HOURS_COVERAGE = 0.9  # the "usual hours" window holds this share of a user's events
LOG_STATS = ("log_duration", "log_actions")
SHARE_KINDS = ("device", "event", "hour", "dow")
_INV_EVIDENCE = {"device": "sum_inv_sessions", "event": "sum_inv_events",
                 "hour": "sum_inv_sessions", "dow": "sum_inv_sessions"}
COMOMENT_MISSING = "comoment_missing"
_FIXED_PREFIX = "_fixed_"  # a float sum's fixed-point terms, before the per-user group_by
_MIN_RESULTANT = 1e-12
_MIN_BETWEEN_VAR = 1e-9
MIN_SHARE_PRIOR = 0.1
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


def lookback_window(as_of: date, lookback: int) -> tuple[date, date]:
    """The window a baseline for ``as_of`` learns from, as [start, end): the ``lookback``
    days before ``as_of``, nothing on or after the scored day. The start is clipped at
    ``date.min`` (a day near 0001-01-01 has fewer days of history, not an OverflowError).
    The one definition: the aggregate filter here and the partitions the store reads
    (``uba.features.store.lookback_days``) both come from it."""
    return as_of - timedelta(days=min(lookback, (as_of - date.min).days)), as_of


def _window(aggregates: pl.LazyFrame, as_of: date, lookback_days: int) -> pl.LazyFrame:
    """Aggregates of the lookback window (``lookback_window``)."""
    start, end = lookback_window(as_of, lookback_days)
    day = pl.col("event_date").cast(pl.Date)
    return aggregates.filter((day >= start) & (day < end))


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
    """Roll the daily rows of each user up into window totals (all additive).

    Every aggregation is a plain sum, min or max of a column: what depends on the row
    (the fixed-point terms of the float sums, the weekday masks, the missing co-moment)
    is computed elementwise before the group_by. The same expressions inside the
    aggregation (``filter``, ``fill_null``, ``exact_sum``) made Polars evaluate them
    group by group: 40% more CPU for the same totals, on the driver's shared cores.
    """
    counts = [hour_col(h) for h in HOURS] + [device_col(d) for d in devices]
    counts += [event_col(e) for e in events]
    dow = pl.col("day_of_week").cast(pl.Int64)
    rows = window.with_columns(
        pl.col("event_date").cast(pl.Date),
        *(fixed_point(pl.col(c)).alias(_FIXED_PREFIX + c) for c in FLOAT_SUM_COLUMNS),
        # a day whose aggregates predate the co-moment (kept after its events were pruned):
        # the user's own duration-given-actions statistics are then unknown (the prior's)
        pl.col(CROSS_COLUMN).is_null().alias(COMOMENT_MISSING),
        # null weekday or count: left out of the sums, as a filter would
        *(pl.when(dow == d).then(pl.col("n_events")).otherwise(0).alias(dow_count_col(d)) for d in WEEKDAYS),
        *((dow == d).alias(dow_days_col(d)) for d in WEEKDAYS),
    )
    return rows.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("days_active"),
        pl.col("event_date").min().alias("first_active"),
        pl.col("event_date").max().alias("last_active"),
        pl.col("n_events", "n_sessions", "n_downloads").sum().cast(pl.Int64),
        pl.col("max_events_in_session").max().cast(pl.Int64),
        *(from_fixed_point(pl.col(_FIXED_PREFIX + c).sum()).alias(c) for c in FLOAT_SUM_COLUMNS),
        pl.col(COMOMENT_MISSING).any(),
        *(pl.col(c).sum().cast(pl.Int64) for c in counts),  # a sum skips nulls: fill_null(0) adds nothing
        *(pl.col(dow_count_col(d)).sum().cast(pl.Int64) for d in WEEKDAYS),
        *(pl.col(dow_days_col(d)).sum().cast(pl.Int64) for d in WEEKDAYS),
    )


def _within_ss(stat: str) -> pl.Expr:
    """Sum of squared deviations from the user's own mean (0 for a single event).

    Differences below the float resolution of the sums are rounding, not spread, and
    count as exactly 0 (a perfectly regular user has spread 0, then the floor).
    """
    return _centred_ss(pl.col(f"sumsq_{stat}"), pl.col(f"sum_{stat}"), pl.col("n_events").cast(pl.Float64))


def _centred_ss(sumsq: pl.Expr, total: pl.Expr, n: pl.Expr) -> pl.Expr:
    """``sumsq - total**2 / n`` with rounding-level values (and NaN) as exactly 0."""
    ss = sumsq - total**2 / n
    return pl.when(ss > sumsq.abs() * _FLOAT_RESOLUTION).then(ss).otherwise(0.0)


def _within_sp() -> pl.Expr:
    """Sum of cross products of log duration and log actions around the user's own means
    (0 for a single event; rounding-level values count as 0, as in ``_within_ss``)."""
    return _centred_sp(pl.col(CROSS_COLUMN), pl.col("sum_log_duration"), pl.col("sum_log_actions"),
                       pl.col("n_events").cast(pl.Float64))


def _centred_sp(cross: pl.Expr, total_a: pl.Expr, total_b: pl.Expr, n: pl.Expr) -> pl.Expr:
    """``cross - total_a * total_b / n`` with rounding-level values (and NaN) as exactly 0."""
    sp = cross - total_a * total_b / n
    return pl.when(sp.abs() > cross.abs() * _FLOAT_RESOLUTION).then(sp).otherwise(0.0)


_REGRESSION_SUMS = ("sum_log_duration", "sumsq_log_duration", "sum_log_actions", "sumsq_log_actions",
                    CROSS_COLUMN)


def _regression_sums(with_comoment: pl.Expr) -> list[pl.Expr]:
    """Within-user sums of squares and cross products of the users whose co-moment is
    known (``with_comoment``), for the pooled slope of log duration on log actions."""
    dof = (pl.col("n_events") - 1).clip(0, None).cast(pl.Float64)

    def known(value: pl.Expr) -> pl.Expr:
        return pl.when(with_comoment).then(value).otherwise(0.0)

    total = [pl.col("n_events").cast(pl.Float64), *(pl.col(c) for c in _REGRESSION_SUMS)]
    return [
        exact_sum(known(_within_sp())).alias("within_sp_reg"),
        exact_sum(known(_within_ss("log_actions"))).alias("within_ssa_reg"),
        exact_sum(known(_within_ss("log_duration"))).alias("within_ssd_reg"),
        known(dof).sum().alias("within_dof_reg"),
        *(exact_sum(known(value)).alias(f"reg_{name}")
          for name, value in zip(("n_events", *_REGRESSION_SUMS), total, strict=True)),
    ]


def _residual_ss(ssd: pl.Expr, sp: pl.Expr, ssa: pl.Expr, slope: pl.Expr) -> pl.Expr:
    """Sum of squared residuals of log duration around ``slope`` x log actions (>= 0)."""
    return (ssd - 2.0 * slope * sp + slope * slope * ssa).clip(0.0, None)


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


def _population_sums(users: pl.LazyFrame, devices: list[str], events: list[str],
                     by: str | None = None) -> pl.LazyFrame:
    """One row of window totals plus the pooled within-user variances used as priors
    (one row per value of ``by`` when given: the peer groups' totals)."""
    counts = [count for _, _, count in _category_specs(devices, events)]
    counts += [hour_col(h) for h in HOURS]  # raw hours, for the population's usual-hours window
    dof = (pl.col("n_events") - 1).clip(0, None).cast(pl.Float64)
    user_spread = _circular_spread_hours(pl.col("_cos_mean"), pl.col("_sin_mean"))
    totals = [
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
        *_regression_sums(~pl.col(COMOMENT_MISSING)),
        *(exact_sum(pl.col(f"raw_mean_{stat}")).alias(f"sum_user_mean_{stat}") for stat in LOG_STATS),
        *(exact_sum(pl.col(f"raw_mean_{stat}") ** 2).alias(f"sumsq_user_mean_{stat}")
          for stat in LOG_STATS),
        exact_sum(1.0 / pl.col("n_sessions").cast(pl.Float64).clip(1.0, None)).alias("sum_inv_sessions"),
        exact_sum(1.0 / pl.col("n_events").cast(pl.Float64).clip(1.0, None)).alias("sum_inv_events"),
        *_user_share_sums(devices, events),
    ]
    return users.select(*totals) if by is None else users.group_by(by).agg(*totals)


def _user_share_sums(devices: list[str], events: list[str]) -> list[pl.Expr]:
    """Sums of each user's category shares and their squares (for the share priors)."""
    n = pl.col("n_events").cast(pl.Float64)
    out = []
    for kind, label, count in _category_specs(devices, events):
        share = pl.col(count).cast(pl.Float64) / n
        out += [exact_sum(share).alias(f"sum_share_{kind}_{label}"),
                exact_sum(share**2).alias(f"sumsq_share_{kind}_{label}")]
    return out


def _share_prior(kind: str, labels: list[str], max_prior: float) -> pl.Expr:
    """Empirical-Bayes prior strength (pseudo-sessions) of one kind of category share.

    Beta/Dirichlet method of moments: across users, the true shares vary with variance
    ``p (1 - p) / (alpha + 1)``. Habits that differ a lot between users (desktop-only vs
    mobile-only) give a small alpha, so a user's own history dominates and a device they
    never used is very surprising; shares that everybody has alike give a large alpha.
    The observed variance is corrected for each user's sampling noise
    ``p (1 - p) / sessions``; the result is kept in [MIN_SHARE_PRIOR, max_prior].
    """
    users = pl.col("n_users").cast(pl.Float64)
    binomial, between = [], []
    for label in labels:
        total, squares = pl.col(f"sum_share_{kind}_{label}"), pl.col(f"sumsq_share_{kind}_{label}")
        mean = total / users
        spread = (squares - total**2 / users) / (users - 1)
        noise = mean * (1 - mean) * pl.col(_INV_EVIDENCE[kind]) / users
        binomial.append(mean * (1 - mean))
        between.append((spread - noise).clip(0.0, None))
    alpha = pl.sum_horizontal(binomial) / pl.sum_horizontal(between) - 1.0
    alpha = alpha.fill_nan(max_prior).clip(MIN_SHARE_PRIOR, max_prior)
    return pl.when(users > 1).then(alpha).otherwise(max_prior)


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
    specs = _category_specs(devices, events)
    shares = _smoothed_population_shares(specs)
    shares += [
        _share_prior(kind, [label for k, label, _ in specs if k == kind],
                     features.prior_strength_sessions).alias(f"pop_share_prior_{kind}")
        for kind in SHARE_KINDS
    ]
    moments = []
    max_prior = features.prior_strength_days * pl.col("n_sessions") / pl.col("user_days")
    for stat in LOG_STATS:
        total_var, within = _log_stat_variances(stat)
        prior_sessions = (within / _between_user_var(stat, within)).clip(0.0, max_prior)
        moments += [
            (pl.col(f"sum_{stat}") / n).alias(f"pop_mean_{stat}"),
            total_var.alias(f"pop_var_{stat}"),
            within.alias(f"pop_within_var_{stat}"),
            prior_sessions.alias(f"pop_prior_sessions_{stat}"),
        ]
    moments += _population_regression(features)
    cos_mean, sin_mean = pl.col("sum_hour_cos") / n, pl.col("sum_hour_sin") / n
    total_hour_var = _circular_spread_hours(cos_mean, sin_mean) ** 2
    moments += [
        cos_mean.alias("pop_cos_mean"),
        sin_mean.alias("pop_sin_mean"),
        pl.when(dof > 0).then(pl.col("within_ss_hour") / dof).otherwise(total_hour_var)
        .alias("pop_within_var_hour"),
    ]
    return pop.with_columns(*moments, *shares)


def _log_stat_variances(stat: str) -> tuple[pl.Expr, pl.Expr]:
    """The population's total variance of a log stat and its pooled within-user variance,
    each with a fallback that stays finite when too few events or users allow it (one
    event in all: 0; nobody with two events: the total variance)."""
    n = pl.col("n_events").cast(pl.Float64)
    dof = pl.col("within_dof")
    total_var = pl.when(n > 1).then(_within_ss(stat) / (n - 1)).otherwise(0.0)
    within = pl.when(dof > 0).then(pl.col(f"within_ss_{stat}") / dof).otherwise(total_var)
    return total_var, within


def _population_regression(features: FeatureSettings) -> list[pl.Expr]:
    """Log session length given log actions, for the population (and a peer group).

    ``pop_within_slope`` / ``pop_within_resid_var``: the pooled within-user slope of log
    duration on log actions and the residual variance around it (what a user's own
    regression is shrunk toward); ``pop_slope_prior``: the slope's prior strength, in
    within-user sums of squares of log actions (``prior_strength_days`` days of the
    typical user's events with the typical within-user spread of actions);
    ``pop_slope`` / ``pop_resid_var``: the total regression over everyone (an unknown
    user could be anyone). Only users whose co-moment is known count, and only for their
    share of the evidence (within-user degrees of freedom, events): the rest counts as
    no regression (slope 0, the plain spread of log length). With aggregates from before
    the co-moment in the window (pruned events), a handful of users new since the upgrade
    would otherwise set everyone's line and spread; with every co-moment known the
    share is exactly 1 and nothing changes.
    """
    ssa, sp, ssd, dof = (pl.col(c) for c in ("within_ssa_reg", "within_sp_reg", "within_ssd_reg",
                                              "within_dof_reg"))
    slope = pl.when(ssa > 0).then(sp / ssa).otherwise(0.0)
    within = pl.when(dof > 1).then(_residual_ss(ssd, sp, ssa, slope) / (dof - 1.0)).otherwise(None)
    # without a regression, the plain spreads of log duration: a window where nobody has
    # two events (a fresh deployment, a new peer group) must not give NaN (0/0)
    total_duration_var, fallback = _log_stat_variances("log_duration")
    events_per_day = pl.col("n_events").cast(pl.Float64) / pl.col("user_days").cast(pl.Float64)
    action_var = pl.when(dof > 0).then(ssa / dof).otherwise(0.0)
    n = pl.col("reg_n_events")
    # rounding-level sums count as 0, as the users' own do: where everybody's sessions have
    # the same number of actions, sumsq - sum**2 / n is rounding noise, and so was the slope
    t_ssa = _centred_ss(pl.col("reg_sumsq_log_actions"), pl.col("reg_sum_log_actions"), n)
    t_ssd = _centred_ss(pl.col("reg_sumsq_log_duration"), pl.col("reg_sum_log_duration"), n)
    t_sp = _centred_sp(pl.col(f"reg_{CROSS_COLUMN}"), pl.col("reg_sum_log_duration"),
                       pl.col("reg_sum_log_actions"), n)
    t_slope = pl.when((n > 1) & (t_ssa > 0)).then(t_sp / t_ssa).otherwise(0.0)
    t_var = pl.when(n > 2).then(_residual_ss(t_ssd, t_sp, t_ssa, t_slope) / (n - 2.0)).otherwise(None)
    known = _known_share(dof, pl.col("within_dof"))
    t_known = _known_share(n, pl.col("n_events").cast(pl.Float64))
    return [
        (known * slope).alias("pop_within_slope"),
        pl.coalesce(known * within + (1.0 - known) * fallback, fallback, pl.lit(0.0)).alias("pop_within_resid_var"),
        (features.prior_strength_days * events_per_day * action_var).fill_nan(0.0).fill_null(0.0)
        .alias("pop_slope_prior"),
        (t_known * t_slope).alias("pop_slope"),
        pl.coalesce(t_known * t_var + (1.0 - t_known) * total_duration_var, total_duration_var)
        .alias("pop_resid_var"),
    ]


def _known_share(known: pl.Expr, total: pl.Expr) -> pl.Expr:
    """The share of ``total`` evidence whose co-moment is known (1 when there is none)."""
    return pl.when(total > 0).then(known / total).otherwise(1.0)


def _between_user_var(stat: str, within: pl.Expr) -> pl.Expr:
    """Variance of the users' true means: spread of their sample means minus sampling noise.

    The classic empirical-Bayes (method of moments) estimate; a user's mean of ``n``
    sessions carries noise ``within / n``. Floored so the prior strength stays finite.
    """
    users = pl.col("n_users").cast(pl.Float64)
    total = pl.col(f"sum_user_mean_{stat}")
    spread = (pl.col(f"sumsq_user_mean_{stat}") - total**2 / users) / (users - 1)
    noise = within * pl.col("sum_inv_sessions") / users
    return pl.when(users > 1).then(spread - noise).otherwise(0.0).clip(_MIN_BETWEEN_VAR, None)


def _with_usual_hours(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add the shortest circular run of hours holding USUAL_HOURS_COVERAGE of the events.

    Used only to phrase reasons ("outside this user's usual 09:00-17:00"): start hour
    and length in hours; the earliest start wins ties so the result is deterministic.
    Computed on the (users x 24) count matrix in numpy (``usual_hours``): the same
    search as list expressions took a third of the baselines' time.
    """
    inputs = pl.struct([pl.col(hour_col(h)).cast(pl.Int64).fill_null(0) for h in HOURS]
                       + [pl.col("n_events").cast(pl.Float64).alias("_n_events")])
    usual = inputs.map_batches(_usual_hours_batch, return_dtype=_USUAL_HOURS_DTYPE, is_elementwise=True)
    return frame.with_columns(usual.alias("_usual")).unnest("_usual")


_USUAL_HOURS_DTYPE = pl.Struct({"usual_hour_length": pl.Int64, "usual_hour_start": pl.Int64})


def _usual_hours_batch(packed: pl.Series) -> pl.Series:
    table = packed.struct.unnest()
    counts = table.select(hour_col(h) for h in HOURS).to_numpy().astype(np.int64, copy=False)
    n_events = table["_n_events"].to_numpy()
    length, start = usual_hours(counts.reshape(len(table), len(HOURS)), n_events)
    return pl.DataFrame({"usual_hour_length": length, "usual_hour_start": start},
                        schema=dict(_USUAL_HOURS_DTYPE)).to_struct(packed.name)


def usual_hours(counts: np.ndarray, n_events: np.ndarray) -> tuple[pl.Series, pl.Series]:
    """For each row of hour counts: the shortest circular window (length, earliest start)
    holding ``USUAL_HOURS_COVERAGE`` of ``n_events``; null where ``n_events`` is null/NaN.

    One pass per window length, over the rows not settled yet, until none is left: most
    users' window is under 8 hours, and passing every row through all 24 lengths took
    twice as long."""
    rows, hours = counts.shape
    prefix = np.zeros((rows, 2 * hours + 1), dtype=np.int64)
    np.cumsum(np.concatenate([counts, counts], axis=1), axis=1, out=prefix[:, 1:])
    need = n_events * USUAL_HOURS_COVERAGE - 1e-9
    length = np.zeros(rows, dtype=np.int64)
    start = np.zeros(rows, dtype=np.int64)
    open_rows = np.flatnonzero(~np.isnan(need))
    prefix, need = prefix[open_rows], need[open_rows]
    for k in range(1, hours + 1):
        if open_rows.size == 0:
            break
        covered = prefix[:, k:k + hours] - prefix[:, :hours]
        hit = covered.max(axis=1).astype(np.float64) >= need
        if hit.any():
            length[open_rows[hit]] = k
            start[open_rows[hit]] = covered[hit].argmax(axis=1)
            left = ~hit
            open_rows, prefix, need = open_rows[left], prefix[left], need[left]
    missing = length == 0
    return (pl.Series(length).set(pl.Series(missing), None) if missing.any() else pl.Series(length),
            pl.Series(start).set(pl.Series(missing), None) if missing.any() else pl.Series(start))


def _evidence(kind: str) -> pl.Expr:
    """Independent observations behind a share: sessions for session-level habits
    (device, hour, weekday), events for the type of each action."""
    column = "n_events" if kind == "event" else "n_sessions"
    return pl.col(column).cast(pl.Float64).clip(1.0, None)


def _shrunk_shares(specs: list[tuple[str, str, str]]) -> list[pl.Expr]:
    """Raw shares and Dirichlet-smoothed shares (alpha pseudo-sessions shaped like the population).

    ``alpha`` is the kind's empirical-Bayes prior strength (``pop_share_prior_<kind>``,
    the peer group's where there is one) and the pseudo-sessions are shaped like the
    prior's shares; the rarity compares the result with the whole population.

    The evidence for device, hour and weekday is counted in sessions, not events: the
    events of one session share its device and hour, so 200 events in 40 sessions are 40
    observations of a habit, not 200. ``p = (share * n + alpha * p_pop) / (n + alpha)``;
    a category the user never used has rarity ``ln((n + alpha) / alpha)``
    (``unseen_rarity_<kind>``).
    Hours get no raw share column: reasons phrase hours through the usual-hours window.
    """
    n = pl.col("n_events").cast(pl.Float64)
    out = []
    for kind in SHARE_KINDS:
        alpha, evidence = pl.col(prior_name(f"pop_share_prior_{kind}")), _evidence(kind)
        out += [alpha.alias(f"share_prior_{kind}"),
                ((evidence + alpha) / alpha).log().alias(f"unseen_rarity_{kind}")]
    for kind, label, count_name in specs:
        alpha, evidence = pl.col(prior_name(f"pop_share_prior_{kind}")), _evidence(kind)
        share = pl.col(count_name).cast(pl.Float64) / n
        pop = pl.col(f"pop_{prob_col(kind, label)}")
        target = pl.col(prior_name(f"pop_{prob_col(kind, label)}"))
        shrunk = (share * evidence + alpha * target) / (evidence + alpha)
        out.append(shrunk.alias(prob_col(kind, label)))
        out.append((pop / shrunk).log().clip(0.0, None).alias(rarity_col(kind, label)))
        if kind != "hour":
            out.append(share.alias(share_col(kind, label)))
    return out


def _population_reference(features: FeatureSettings) -> list[pl.Expr]:
    """Population mean/spread (floored) copied into every row, for the row-local
    "extreme for anyone" check."""
    out = []
    for stat in LOG_STATS:
        out += [
            pl.col(f"pop_mean_{stat}").alias(f"pop_mean_{stat}"),
            pl.col(f"pop_var_{stat}").sqrt().clip(features.min_log_spread, None).alias(f"pop_sd_{stat}"),
        ]
    return out


def _user_rows(users: pl.LazyFrame, pop: pl.LazyFrame, priors: pl.LazyFrame | None, as_of: date, devices: list[str],
               events: list[str], features: FeatureSettings) -> pl.LazyFrame:
    """Shrink each user's statistics toward their prior and floor the spreads.

    ``priors`` (``user_id`` and the ``prior_*`` columns, see :func:`prior_columns`) is
    the user's peer group's statistics where a directory names one (:func:`_peer_priors`);
    ``None`` is the population's for everyone. The "extreme for anyone" reference and
    the rarities stay relative to the whole population either way.

    Means: empirical Bayes, weight ``n / (n + k)`` with ``n`` the user's sessions and
    ``k = within-user variance / between-user variance`` estimated from everyone (at
    most ``prior_strength_days`` days of sessions). Spreads: weight
    ``days / (days + prior_strength_days)`` toward the typical user's own spread, then
    widened by the uncertainty of the mean (``1 + 1 / (n + k)``), so a new user's
    few observations do not make a tight, overconfident baseline. The mean hour is the
    user's own: users' hours are multimodal (office, night shift, other time zones), so
    a population mean hour is no sensible prior; little history widens the spread instead.
    """
    prior = features.prior_strength_days
    w = pl.col("shrink_weight")
    sessions = pl.col("n_sessions").cast(pl.Float64).clip(1.0, None)
    joined = _with_usual_hours(users).join(
        pop.select(pl.selectors.starts_with("pop_")), how="cross"
    )
    joined = joined.with_columns(pl.col(c).alias(prior_name(c)) for c in prior_columns(devices, events)) \
        if priors is None else joined.join(priors, on="user_id", how="left")
    joined = joined.with_columns(
        shrink_weight=pl.col("days_active").cast(pl.Float64)
        / (pl.col("days_active").cast(pl.Float64) + prior),
        **{f"mean_weight_{stat}": sessions / (sessions + pl.col(prior_name(f"pop_prior_sessions_{stat}")))
           for stat in LOG_STATS},
    )
    moments = []
    for stat in LOG_STATS:
        wm, k = pl.col(f"mean_weight_{stat}"), pl.col(prior_name(f"pop_prior_sessions_{stat}"))
        mean = wm * pl.col(f"raw_mean_{stat}") + (1 - wm) * pl.col(prior_name(f"pop_mean_{stat}"))
        var = w * pl.col(f"raw_var_{stat}") + (1 - w) * pl.col(prior_name(f"pop_within_var_{stat}"))
        var = var * (1.0 + 1.0 / (sessions + k))
        moments += [
            mean.alias(f"mean_{stat}"),
            var.sqrt().clip(features.min_log_spread, None).alias(f"sd_{stat}"),
            pl.col(f"raw_var_{stat}").sqrt().alias(f"raw_sd_{stat}"),
        ]
    moments += _user_regression(features)
    user_spread = _circular_spread_hours(pl.col("_cos_mean"), pl.col("_sin_mean"))
    own_mean = _circular_mean_hours(pl.col("_cos_mean"), pl.col("_sin_mean"))
    hour_var = (w * user_spread**2 + (1 - w) * pl.col(prior_name("pop_within_var_hour"))) * (1.0 + 1.0 / sessions)
    moments += [
        own_mean.alias("raw_hour_mean"),
        user_spread.alias("raw_hour_spread"),
        own_mean.alias("hour_mean"),
        hour_var.sqrt().clip(features.min_hour_spread, MAX_HOUR_SPREAD).alias("hour_spread"),
    ]
    return joined.with_columns(
        *moments,
        *_shrunk_shares(_category_specs(devices, events)),
        *_population_reference(features),
        *_activity(as_of, pl.col("first_active"), pl.col("days_active")),
    )


def _user_regression(features: FeatureSettings) -> list[pl.Expr]:
    """The user's log session length given the session's log actions.

    Slope: ``(SP + kappa b) / (SSa + kappa)``, the user's own within-user cross products
    and sum of squares of log actions with ``kappa`` (``pop_slope_prior``) pseudo-squares
    at the prior's slope ``b``, so a user whose sessions all have the same number of
    actions keeps the prior's slope. Residual spread around that line: the user's own
    residual variance shrunk toward the prior's with ``w = days / (days + prior)``,
    widened by the uncertainty of the mean (``1 + 1 / (n + k)``) and floored at
    ``min_log_spread``, as ``sd_log_duration`` is. A user with a day of unknown co-moment
    gets the prior's slope, and their plain length variance stands in for their own
    residual variance (the prior's alone let a few users new since the upgrade set it).
    """
    known = ~pl.col(COMOMENT_MISSING)
    ssa = pl.when(known).then(_within_ss("log_actions")).otherwise(0.0)
    sp = pl.when(known).then(_within_sp()).otherwise(0.0)
    ssd = pl.when(known).then(_within_ss("log_duration")).otherwise(0.0)
    kappa, prior_slope = pl.col(prior_name("pop_slope_prior")), pl.col(prior_name("pop_within_slope"))
    slope = pl.when(ssa + kappa > 0).then((sp + kappa * prior_slope) / (ssa + kappa)).otherwise(prior_slope)
    n = pl.col("n_events").cast(pl.Float64)
    # without the co-moment, the user's own residual spread is unknown but their plain
    # length spread is not: it stands in (no line explains any of it), shrunk as usual
    own = pl.when(~known).then(pl.col("raw_var_log_duration")) \
        .when(n > 1).then(_residual_ss(ssd, sp, ssa, slope) / (n - 1.0)).otherwise(0.0)
    w = pl.col("shrink_weight")
    sessions = pl.col("n_sessions").cast(pl.Float64).clip(1.0, None)
    k = pl.col(prior_name("pop_prior_sessions_log_duration"))
    var = (w * own + (1 - w) * pl.col(prior_name("pop_within_resid_var"))) * (1.0 + 1.0 / (sessions + k))
    return [slope.alias("slope_log_duration"),
            var.sqrt().clip(features.min_log_spread, None).alias("sd_log_duration_given_actions")]


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
        pl.lit(1.0).alias("mean_weight_log_duration"),
        pl.lit(1.0).alias("mean_weight_log_actions"),
        *(pl.lit(0.0).alias(f"unseen_rarity_{kind}") for kind in SHARE_KINDS),
        *(pl.col(f"pop_share_prior_{kind}").alias(f"share_prior_{kind}") for kind in SHARE_KINDS),
        *_population_reference(features),
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
    exprs += [
        pl.col("pop_slope").alias("slope_log_duration"),
        pl.col("pop_resid_var").sqrt().clip(features.min_log_spread, None).alias("sd_log_duration_given_actions"),
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


def prior_name(pop_column: str) -> str:
    """The shrinkage-target twin of a population column: ``pop_mean_x`` -> ``prior_mean_x``."""
    return "prior_" + pop_column.removeprefix("pop_")


def prior_columns(devices: list[str], events: list[str]) -> list[str]:
    """The population columns a user is shrunk toward (the peer group replaces them)."""
    cols = [f"pop_{name}_{stat}" for stat in LOG_STATS for name in ("mean", "within_var", "prior_sessions")]
    cols += ["pop_within_slope", "pop_within_resid_var", "pop_slope_prior"]
    cols += ["pop_within_var_hour", *(f"pop_share_prior_{kind}" for kind in SHARE_KINDS)]
    cols += [f"pop_{prob_col(kind, label)}" for kind, label, _ in _category_specs(devices, events)]
    return cols


def _peer_priors(users: pl.LazyFrame, pop: pl.LazyFrame, peers: pl.LazyFrame, devices: list[str],
                 events: list[str], features: FeatureSettings) -> pl.LazyFrame:
    """Each user's prior: their peer group's statistics, computed exactly as the
    population's are but over the group's users, or the population's for a user with
    no group or in a group of fewer than ``peer_min_users`` users active in the window.

    Also the group's own habits the peer deviation features compare an event with
    (:func:`peer_columns`; null for a user without a usable group)."""
    names = prior_columns(devices, events)
    grouped = users.join(peers.select("user_id", "peer_group"), on="user_id", how="inner")
    groups = _population_stats(_population_sums(grouped, devices, events, by="peer_group"),
                               devices, events, features)
    groups = groups.filter(pl.col("n_users") >= features.peer_min_users).select(
        "peer_group", pl.lit(True).alias("_peer"), *(pl.col(c).alias(prior_name(c)) for c in names),
        *_peer_habits(devices, events, features))
    fallback = pop.select(*(pl.col(c).alias("_pop_" + c) for c in names))
    chosen = users.select("user_id").join(peers.select("user_id", "peer_group"), on="user_id", how="left") \
        .join(groups, on="peer_group", how="left").join(fallback, how="cross")
    return chosen.select("user_id", *(
        pl.when(pl.col("_peer")).then(pl.col(prior_name(c))).otherwise(pl.col("_pop_" + c)).alias(prior_name(c))
        for c in names), *peer_columns(devices, events))


def peer_columns(devices: list[str], events: list[str]) -> list[str]:
    """The snapshot columns of a user's peer group's habits (present only with a directory).

    ``peer_hour_mean`` / ``peer_hour_spread``: circular mean and total circular spread of
    the group's events' hours (hours); ``peer_p_device_<d>``: the group's smoothed device
    shares; ``peer_p_event_download``: its smoothed download share (when downloads are a
    category). Shares are smoothed like the population's (one pseudo-event per category).
    """
    cols = ["peer_hour_mean", "peer_hour_spread", *(f"peer_{prob_col('device', d)}" for d in devices)]
    return cols + [f"peer_{prob_col('event', DOWNLOAD)}"] if DOWNLOAD in events else cols


def _peer_habits(devices: list[str], events: list[str], features: FeatureSettings) -> list[pl.Expr]:
    """A group's habits from its ``_population_stats`` row (see :func:`peer_columns`)."""
    cos_mean, sin_mean = pl.col("pop_cos_mean"), pl.col("pop_sin_mean")
    out = [_circular_mean_hours(cos_mean, sin_mean).alias("peer_hour_mean"),
           _circular_spread_hours(cos_mean, sin_mean).clip(features.min_hour_spread, MAX_HOUR_SPREAD)
           .alias("peer_hour_spread")]
    out += [pl.col(f"pop_{prob_col('device', d)}").alias(f"peer_{prob_col('device', d)}") for d in devices]
    if DOWNLOAD in events:
        out.append(pl.col(f"pop_{prob_col('event', DOWNLOAD)}").alias(f"peer_{prob_col('event', DOWNLOAD)}"))
    return out


# Joins department and role into one group key: a control character, which the directory
# refuses in both, so "a/b" + "c" and "a" + "b/c" (or a role "?" and no role) stay apart.
GROUP_SEPARATOR = "\x1f"


def peer_groups(directory: pl.DataFrame, by: str) -> pl.DataFrame:
    """``user_id``, ``peer_group`` from the directory: the department, or department and
    role (``by``); a user with no department has no group (the population is their prior)."""
    group = pl.col("department") if by == "department" else \
        pl.concat_str(pl.col("department"), pl.col("role").fill_null(""), separator=GROUP_SEPARATOR)
    return directory.select("user_id", group.alias("peer_group")).filter(pl.col("peer_group").is_not_null())


def _as_lazy(frame: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def baseline_columns(devices: list[str], events: list[str]) -> list[str]:
    """Ordered columns of the baselines frame (the snapshot format the API reads)."""
    cols = [
        "user_id", "as_of", "history_days", "days_active", "shrink_weight",
        "mean_weight_log_duration", "mean_weight_log_actions",
        "n_events", "n_sessions", "n_downloads", "max_events_in_session",
        "events_per_day", "events_per_active_day", "sessions_per_active_day",
        "downloads_per_active_day",
    ]
    for stat in ("log_duration", "log_actions"):
        cols += [f"raw_mean_{stat}", f"raw_sd_{stat}", f"mean_{stat}", f"sd_{stat}"]
        cols += [f"pop_mean_{stat}", f"pop_sd_{stat}"]
    cols += ["slope_log_duration", "sd_log_duration_given_actions"]
    cols += ["raw_hour_mean", "raw_hour_spread", "hour_mean", "hour_spread",
             "usual_hour_start", "usual_hour_length"]
    cols += [f"share_prior_{kind}" for kind in SHARE_KINDS]
    cols += [f"unseen_rarity_{kind}" for kind in SHARE_KINDS]
    for kind, label, _ in _category_specs(devices, events):
        if kind != "hour":
            cols.append(share_col(kind, label))
        cols += [prob_col(kind, label), rarity_col(kind, label)]
    cols += [dow_days_col(d) for d in WEEKDAYS]
    return cols


def user_baselines(aggregates: pl.LazyFrame, as_of: date, features: FeatureSettings,
                   peers: pl.LazyFrame | pl.DataFrame | None = None) -> pl.LazyFrame:
    """One baseline row per user active in [as_of - lookback_days, as_of), plus the population row.

    ``peers`` (``user_id``, ``peer_group``; see :func:`peer_groups`) comes from the user
    directory: each user in a group of at least ``features.peer_min_users`` active users
    is shrunk toward that group's statistics instead of the population's, and every row
    also carries the group's habits (:func:`peer_columns`, for the peer deviation
    features). ``None`` (no directory) is the population prior for everyone and exactly
    the columns of :func:`baseline_columns`.

    Only aggregate rows strictly before ``as_of`` are used, whatever ``aggregates`` holds,
    so a day is never scored against a baseline that already contains it. The
    population row is present even with no history (its statistics are then null/NaN
    and the event features treat them as "no information").
    """
    window = _window(aggregates, as_of, features.lookback_days)
    schema = window.collect_schema()
    if CROSS_COLUMN not in schema:  # aggregates from before the co-moment only
        window = window.with_columns(pl.lit(None, pl.Float64).alias(CROSS_COLUMN))
    devices, events = _count_columns(schema)
    # users and pop each feed two branches of the plan; without cache() Polars computed
    # them once per branch (the baselines took ~1.6x as long)
    users = _per_user_sums(window, devices, events).with_columns(*_user_moments(), *_smoothed_hours()).cache()
    pop = _population_stats(_population_sums(users, devices, events), devices, events, features).cache()
    pop_days = window.select(
        pl.col("event_date").n_unique().cast(pl.Int64).alias("active_dates"),
        *(pl.col("event_date").filter(pl.col("day_of_week").cast(pl.Int64) == d).n_unique()
          .cast(pl.Int64).alias(dow_days_col(d)) for d in WEEKDAYS)
    )
    priors = None if peers is None else _peer_priors(users, pop, _as_lazy(peers), devices, events, features)
    user_rows = _user_rows(users, pop, priors, as_of, devices, events, features)
    pop_row = _population_row(pop.join(pop_days, how="cross"), as_of, devices, events, features)
    columns = baseline_columns(devices, events)
    if peers is not None:  # the peer group's habits, for the peer deviation features
        columns += peer_columns(devices, events)
        pop_row = pop_row.with_columns(pl.lit(None, pl.Float64).alias(c) for c in peer_columns(devices, events))
    stamp = pl.lit(as_of, pl.Date).alias("as_of")
    frames = [f.with_columns(stamp).select(columns) for f in (user_rows, pop_row)]
    return pl.concat(frames, how="vertical_relaxed").sort(
        pl.col("user_id") == POPULATION_USER, "user_id"
    )

