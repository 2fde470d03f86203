"""FROZEN ORACLE, not product code: the Polars expressions that built reason sentences
until the compiled feature kernel (``uba/features/reasons.py`` as of b6c4c58).

The product ranks and phrases reasons once, in ``uba.features.reasons`` (arrays and plain
Python, for one event or a shard's flagged rows). This copy exists only so
``tests/test_reasons_oracle.py`` can prove the sentences are unchanged. Do not import
it from ``uba``; do not change it.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

REASON_KINDS: tuple[str, ...] = (
    "hour",
    "session_length",
    "actions",
    "device",
    "event_type",
    "download_intensity",
    "time_of_week",
    "global",
)
MIN_SEVERITY = 2.0
MIN_TOP_SEVERITY = 1.0
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _z(column: str | pl.Expr) -> pl.Expr:
    """z-equivalent of a surprise in nats: sqrt(2 s)."""
    expr = pl.col(column) if isinstance(column, str) else column
    return (2.0 * expr.clip(0.0, None)).sqrt()


def _is_download() -> pl.Expr:
    return pl.col("event_type").cast(pl.String) == "download"


def severities() -> dict[str, pl.Expr]:
    """Severity of every reason kind, in REASON_KINDS order (documented in the module)."""
    return {
        "hour": pl.max_horizontal(pl.col("hour_z"), _z("hour_rarity")),
        "session_length": pl.col("session_length_z").clip(0.0, None),
        "actions": pl.col("actions_z").clip(0.0, None),
        "device": _z("device_rarity_nats"),
        "event_type": pl.when(_is_download()).then(0.0).otherwise(_z("event_type_rarity_nats")),
        "download_intensity": _z("download_surprise"),
        "time_of_week": _z("weekday_rarity"),
        "global": pl.col("global_extremity"),
    }


# ---- number formatting -----------------------------------------------------------------


def _num(name: str) -> pl.Expr:
    """A context number as Float64 (an all-missing column may arrive typed Null)."""
    return pl.col(name).cast(pl.Float64)


def _str(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String)


def _ratio(expr: pl.Expr) -> pl.Expr:
    """9.1 below 10, 42 above: as precise as a person needs."""
    expr = expr.cast(pl.Float64).fill_nan(None)
    return pl.when(expr < 10).then(_str(expr.round(1))).otherwise(_str(expr.round(0).cast(pl.Int64)))


def _percent(share: pl.Expr) -> pl.Expr:
    pct = share.cast(pl.Float64).fill_nan(None) * 100.0
    return pl.when(pct < 1).then(_str(pct.round(1))).otherwise(_str(pct.round(0).cast(pl.Int64)))


def _duration(seconds: pl.Expr) -> pl.Expr:
    seconds = seconds.cast(pl.Float64).fill_nan(None)
    return (
        pl.when(seconds < 120).then(pl.format("{} s", _str(seconds.round(0).cast(pl.Int64))))
        .when(seconds < 7200).then(pl.format("{} min", _str((seconds / 60).round(0).cast(pl.Int64))))
        .otherwise(pl.format("{} h", _str((seconds / 3600).round(1))))
    )


def _clock(hour: pl.Expr) -> pl.Expr:
    return pl.format("{}:00", _str(hour.cast(pl.Int64)).str.zfill(2))


def _weekday_name(day: pl.Expr) -> pl.Expr:
    """A mapping, not ``list.get`` on a broadcast literal list: that form panicked in
    Polars 2.1's streaming engine under load (binview index assertion)."""
    return day.cast(pl.Int64).clip(0, 6).replace_strict(
        list(range(7)), list(WEEKDAY_NAMES), return_dtype=pl.String
    )


# ---- texts -----------------------------------------------------------------------------


def _owner() -> pl.Expr:
    """Whose habits the baseline describes: the user's, or everyone's for an unknown user."""
    return pl.when(pl.col("known_user")).then(pl.lit("this user's")).otherwise(pl.lit("most users'"))


def _subject() -> pl.Expr:
    return pl.when(pl.col("known_user")).then(pl.lit("this user")).otherwise(pl.lit("a new user"))


def _first_or_rare(share: pl.Expr, first: pl.Expr, rare: pl.Expr) -> pl.Expr:
    never = pl.col("known_user") & (share.fill_null(0.0) <= 0.0)
    return pl.when(never).then(first).otherwise(rare)


def _hour_text() -> pl.Expr:
    hour = pl.col("event_hour").cast(pl.Int64)
    start, end = pl.col("user_usual_hour_start").cast(pl.Int64), pl.col("user_usual_hour_end").cast(pl.Int64)
    inside = pl.when(start < end).then((hour >= start) & (hour < end)).otherwise(
        (hour >= start) | (hour < end)
    )
    window = pl.format("{}-{}", _clock(start), _clock(end))
    return (
        pl.when(start == end).then(pl.format("{} is an unusual hour for {}", _clock(hour), _subject()))
        .when(inside.not_()).then(pl.format("{} is outside {} usual {}", _clock(hour), _owner(), window))
        .otherwise(pl.format("{} is a rare hour for {} (usual hours {})", _clock(hour), _subject(), window))
    )


def _session_text() -> pl.Expr:
    median = _num("user_median_session_sec")
    ratio = _num("session_duration_sec") / median.clip(1.0, None)
    return pl.format("session {}x longer than {} median ({})", _ratio(ratio), _owner(), _duration(median))


def _actions_text() -> pl.Expr:
    median = _num("user_median_actions")
    ratio = pl.col("events_in_session") / median.clip(1.0, None)
    return pl.format(
        "{} actions in the session, {}x {} median ({})",
        _str(pl.col("events_in_session")), _ratio(ratio), _owner(), _str(median.round(0).cast(pl.Int64)),
    )


def _device_text() -> pl.Expr:
    share, device = _num("user_device_share"), _str(pl.col("device_type"))
    return _first_or_rare(
        share,
        pl.format("first {} use for this user", device),
        pl.format("{} is rare for this user ({}% of events)", device, _percent(share)),
    )


def _event_type_text() -> pl.Expr:
    share, kind = _num("user_event_type_share"), _str(pl.col("event_type"))
    return _first_or_rare(
        share,
        pl.format("first {} event for this user", kind),
        pl.format("{} events are rare for this user ({}% of events)", kind, _percent(share)),
    )


def _download_text() -> pl.Expr:
    share = _num("user_download_share")
    base = _first_or_rare(
        share,
        pl.lit("first download for this user"),
        pl.format("downloads are rare for this user ({}% of events)", _percent(share)),
    )
    ratio = pl.col("events_in_session") / _num("user_median_actions").clip(1.0, None)
    return pl.when(pl.col("actions_z") >= MIN_SEVERITY).then(
        pl.format("{}, in a session of {} actions ({}x usual)", base,
                  _str(pl.col("events_in_session")), _ratio(ratio))
    ).otherwise(base)


def _time_of_week_text() -> pl.Expr:
    share, day = _num("user_weekday_share"), _weekday_name(pl.col("event_weekday"))
    return _first_or_rare(
        share,
        pl.format("first {} activity for this user", day),
        pl.format("{} activity is rare for this user ({}% of events)", day, _percent(share)),
    )


def _global_text() -> pl.Expr:
    duration = _num("session_duration_sec").cast(pl.Float64)
    by_length = pl.format("a {} session is extreme for any user", _duration(duration))
    by_actions = pl.format("{} actions in one session is extreme for any user",
                           _str(pl.col("events_in_session")))
    return pl.when(pl.col("global_by_actions")).then(by_actions).otherwise(by_length)


def texts() -> dict[str, pl.Expr]:
    """The sentence of every reason kind for this row (only the ranked ones are kept)."""
    return {
        "hour": _hour_text(),
        "session_length": _session_text(),
        "actions": _actions_text(),
        "device": _device_text(),
        "event_type": _event_type_text(),
        "download_intensity": _download_text(),
        "time_of_week": _time_of_week_text(),
        "global": _global_text(),
    }


def explain(features: pl.LazyFrame | pl.DataFrame, max_reasons: int = 3,
            sentences_for: pl.Expr | None = None) -> pl.LazyFrame:
    """Add ``reasons`` and ``reason_kinds`` (parallel List(String), strongest first).

    ``features`` is the output of ``uba.features.events.event_features`` (the feature
    and context columns are what is read); row order is kept. The kinds are ranked with
    array arithmetic (``rank_reason_kinds``) and given to every row: suppression rules and
    analysts' filters match on them. Sentences cost far more than the features, so they
    are built only where someone reads them: with ``sentences_for`` (a boolean
    expression, the batch job passes ``is_anomaly``) the other rows get a null
    ``reasons``; without it (the API, which explains whatever it is asked about) every
    row gets its sentences.
    """
    frame = features.collect() if isinstance(features, pl.LazyFrame) else features
    severity = frame.select(
        expr.cast(pl.Float64).fill_nan(0.0).fill_null(0.0).alias(kind) for kind, expr in severities().items()
    ).to_numpy()
    kinds = reason_kinds_column(severity, max_reasons)
    staged = frame.with_columns(kinds)
    readers = (np.ones(frame.height, dtype=bool) if sentences_for is None
               else frame.select(sentences_for.fill_null(False)).to_series().to_numpy().astype(bool))
    rows = np.flatnonzero(readers & (kinds.list.len().to_numpy() > 0))
    # eager on the gathered rows: polars 2.1 panicked ("assertion failed: i < self.len()")
    # in the string expressions when they ran lazily over a few filtered rows of a small frame
    sentences = _sentences(staged[rows].lazy(), max_reasons).collect(engine=_EAGER)["reasons"]
    return staged.with_columns(_spread(sentences, rows, readers)).lazy()


_EAGER = "in-memory"


def _spread(sentences: pl.Series, rows: np.ndarray, readers: np.ndarray) -> pl.Series:
    """The full ``reasons`` column: each listed row's sentences at its position, ``[]`` for a
    row someone reads but that has no reason, null for a row nobody reads."""
    lengths = np.zeros(len(readers), dtype=np.int64)
    lengths[rows] = sentences.list.len().to_numpy()
    offsets = _arrow(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    values = sentences.to_arrow().cast(pa.large_list(pa.large_string())).flatten()
    lists = pa.LargeListArray.from_arrays(offsets, values, mask=_arrow(~readers))
    return pl.Series("reasons", pl.from_arrow(lists), dtype=pl.List(pl.String))


def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy array as Arrow through Polars: ``pa.array`` imports pandas on first use
    (about 0.5 s per worker process, paid by every shard worker's first shard)."""
    return pl.Series(values).to_arrow()


def rank_reason_kinds(severity: np.ndarray, max_reasons: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its kinds strongest first and how many of them are listed.

    ``severity`` is (rows, len(REASON_KINDS)) in REASON_KINDS order. A stable sort on the
    negated severities ranks ties in REASON_KINDS order. A row lists the kinds at or
    above ``keep_from = max(min(top, MIN_SEVERITY), MIN_TOP_SEVERITY)``, at most
    ``max_reasons``: every kind from MIN_SEVERITY up, or the single strongest one when
    none reaches it but it reaches MIN_TOP_SEVERITY; none when even the strongest is
    below that. Returns (order: rows x kinds column indices, counts: rows).
    """
    severity = np.asarray(severity, dtype=np.float64).reshape(-1, len(REASON_KINDS))
    order = np.argsort(-severity, axis=1, kind="stable")
    ranked = np.take_along_axis(severity, order, axis=1)
    top = ranked[:, 0]
    keep_from = np.maximum(np.minimum(top, MIN_SEVERITY), MIN_TOP_SEVERITY)
    listed = (ranked >= keep_from[:, None]).sum(axis=1)
    counts = np.where(top >= MIN_TOP_SEVERITY, np.minimum(listed, max(0, max_reasons)), 0)
    return order, counts


def reason_kinds_column(severity: np.ndarray, max_reasons: int) -> pl.Series:
    """``reason_kinds`` as a List(String) column built straight from the ranking arrays."""
    order, counts = rank_reason_kinds(severity, max_reasons)
    keep = np.arange(order.shape[1])[None, :] < counts[:, None]
    values = pl.Series(REASON_KINDS, dtype=pl.String).gather(order[keep]).to_arrow()
    offsets = _arrow(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    lists = pa.LargeListArray.from_arrays(offsets, values.cast(pa.large_string()))
    return pl.Series("reason_kinds", pl.from_arrow(lists), dtype=pl.List(pl.String))


def _sentences(rows: pl.LazyFrame, max_reasons: int) -> pl.LazyFrame:
    """The sentence of each listed kind, in the row's ``reason_kinds`` order."""
    txt = texts()
    text_col = {kind: f"_text_{kind}" for kind in REASON_KINDS}
    staged = rows.with_columns(
        txt[k].fill_null(pl.lit(k.replace("_", " "))).alias(text_col[k]) for k in REASON_KINDS
    )

    def at(position: int) -> pl.Expr:
        kind = pl.col("reason_kinds").list.get(position, null_on_oob=True)
        return pl.coalesce([pl.when(kind == k).then(pl.col(text_col[k])) for k in REASON_KINDS])

    positions = range(min(max_reasons, len(REASON_KINDS)))
    return staged.with_columns(reasons=pl.concat_list([at(p) for p in positions]).list.drop_nulls())
