"""The event features as array arithmetic over a baseline snapshot compiled once.

Everything an event's features read from its user's baseline depends only on the
snapshot, so :func:`compile_baselines` turns the snapshot frame into per-user arrays
once (at API load, once per batch shard): moments, spreads, first-use weights, medians,
and one ``(users x categories)`` table per category kind (rarities and shares) whose
extra last column is the value for a category the snapshot does not know. An event's
features are then gathers by (user row, category code) plus a few vectorised
operations: ``_features``, the one definition of every feature and context column,
written against an element-wise namespace (``uba.features.elementwise``).
:func:`feature_arrays` runs it on numpy arrays, for the batch job (a shard's columns,
``uba.features.events``) and ``/predict/batch`` (a request's events);
:func:`feature_values` runs the same formulas on one event's plain floats, for
``/predict``, where a hundred numpy calls on one-element arrays cost ten times the work.

Numerics follow the former Polars expressions exactly where it matters: logarithms and
exponentials go through the C library (``math``; Polars calls the same functions, numpy's
own SIMD versions differ in the last bit), and the total of the deviations is added in
the association Polars' ``sum_horizontal`` uses. Missing baseline values are NaN here;
a missing share is told apart from a NaN one by a mask, because "never used" (missing or
0) and "no information" (NaN) read differently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import polars as pl

from uba.features.aggregates import DOWNLOAD, HOURS, WEEKDAYS, categories_in
from uba.features.baselines import POPULATION_USER, hour_label, prob_col, rarity_col, share_col
from uba.features.elementwise import ARRAYS, FLOATS, ArrayMath, Math, Values

# Deviation features, all surprises in nats (0 = as expected for this user), which
# max_surprise and total_surprise summarise. The session's length counts there given its
# actions (``length_for_actions_excess``, uba-features-7): a long session with as many
# more actions is a busy session, which ``actions_excess`` already weighs.
DEVIATION_COLUMNS: tuple[str, ...] = (
    "length_for_actions_excess",
    "actions_excess",
    "hour_deviation",
    "device_rarity",
    "event_type_rarity",
    "download_intensity",
    "time_of_week_rarity",
)

FEATURE_COLUMNS: tuple[str, ...] = (
    # the seed's event-level fields
    "log_session_duration",
    "log_events_in_session",
    "event_hour",
    "event_weekday",
    "event_type_code",
    "device_code",
    # deviations from the user's own baseline
    *DEVIATION_COLUMNS,
    # the session's length against the user's own, whatever its actions (a dimension of
    # its own, outside the summaries since uba-features-7)
    "session_length_excess",
    "first_use",
    # the strongest and the sum of the deviations above, so a one-feature anomaly is
    # extreme in more than one dimension the forest may pick
    "max_surprise",
    "total_surprise",
    # how much history backs the baseline
    "log_history_days",
)

# Deviations from the user's peer group (with a user directory only; docs/features.md):
# the event compared with the habits of the user's department, in nats like the others.
PEER_FEATURE_COLUMNS: tuple[str, ...] = (
    "peer_hour_deviation",
    "peer_device_rarity",
    "peer_download_intensity",
)


def feature_columns(peers: bool) -> tuple[str, ...]:
    """The model's features: FEATURE_COLUMNS, then the peer deviations where a directory
    gave the snapshot peer-group statistics (the directory at training fixes the set)."""
    return (*FEATURE_COLUMNS, *PEER_FEATURE_COLUMNS) if peers else FEATURE_COLUMNS


# Context the reasons quote; kept next to the features in scored output.
CONTEXT_COLUMNS: tuple[str, ...] = (
    "known_user",
    "session_length_z",
    "actions_z",
    "length_for_actions_z",
    "hour_z",
    "device_rarity_nats",
    "event_type_rarity_nats",
    "download_surprise",
    "user_median_session_sec",
    "user_median_actions",
    "user_expected_log_session",
    "user_expected_for_log_actions",
    "user_usual_hour_start",
    "user_usual_hour_end",
    "user_device_share",
    "user_event_type_share",
    "user_download_share",
    "user_weekday_share",
    "hour_rarity",
    "weekday_rarity",
    "global_extremity",
    "global_by_actions",
)
# Context columns where "no value" is a null in frames (NaN in the arrays).
NULLABLE_CONTEXT: tuple[str, ...] = (
    "user_median_session_sec", "user_median_actions", "user_expected_log_session", "user_expected_for_log_actions",
    "user_device_share",
    "user_event_type_share",
    "user_download_share", "user_weekday_share", "hour_rarity", "weekday_rarity",
)
INTEGER_CONTEXT: tuple[str, ...] = ("user_usual_hour_start", "user_usual_hour_end")
BOOLEAN_CONTEXT: tuple[str, ...] = ("known_user", "global_by_actions")

Z_CLIP = 10.0
NOISE_NATS = 4.0  # z-type deviations count from z ~ 2.8 (0.25% one-sided) upward
RARITY_NOISE_NATS = 2.0  # categories count from e^2 ~ 7.4x rarer than for the population
# a download by a user who downloads 3x less than the population, counted from 1 nat: the
# evidence of a spree is split over its rows (row-local), so each row's share is small
DOWNLOAD_NOISE_NATS = 1.0
# a device rarer for the user's peer group than for everyone, counted from e^1 ~ 2.7x: a
# group's share is estimated from many users, so it needs less of a dead zone than one
# user's, and groups are mixtures, so their shares are less extreme than users'
PEER_RARITY_NOISE_NATS = 1.0
RARITY_CLIP = 12.0
HOUR_DEVIATION_CLIP = 12.0
FIRST_USE_CLIP = 2.0
POPULATION_SD_FLOOR = 1e-6
# The user's line of log length on log actions is not extrapolated downward beyond their
# usual activity: mean +- this many spreads of their log actions (uba-features-8). 1.5
# (about the 7th and 93rd percentiles of a normal spread) rather than 2: at 2 a user whose
# length grows steeply with actions still read a 5 s, 1-action session as long; on the four
# evaluation worlds both leave every recall as it was (docs/evaluation.md, run 5).
LINE_RANGE_SDS = 1.5

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]


@dataclass(frozen=True, eq=False)
class CategoryTable:
    """One kind of category: code per name, and per-user values by (row, code).

    ``values`` has one column per known category plus a last one for any other value
    (the baseline's "unseen" rarity, or a share of 0); ``missing`` marks values that
    were null in the snapshot (shares only).
    """

    names: tuple[str, ...]
    values: FloatArray
    missing: BoolArray | None = None

    @cached_property
    def _lookup(self) -> dict[str | None, int]:
        return {name: i for i, name in enumerate(self.names)}

    def codes(self, categories: Sequence[str | None]) -> IndexArray:
        """Position of each category in ``names`` (any other value or None: ``len(names)``)."""
        lookup, other = self._lookup, len(self.names)
        return np.fromiter((lookup.get(c, other) for c in categories), dtype=np.intp, count=len(categories))

    def code(self, category: str | None) -> int:
        """``codes`` of one category."""
        return self._lookup.get(category, len(self.names))


@dataclass(frozen=True, eq=False)
class CompiledBaselines:
    """A baseline snapshot as arrays, one row per snapshot row (the population row included).

    ``scalars`` holds per-row values derived once (see ``_scalars``); the tables give
    the rarities and shares an event looks up by its category.
    """

    user_ids: tuple[str, ...]
    positions: Mapping[str, int]
    population: int
    scalars: Mapping[str, np.ndarray]
    device_rarity: CategoryTable
    event_rarity: CategoryTable
    hour_rarity: FloatArray  # (rows, 25): hours 0..23, then unseen
    dow_rarity: FloatArray  # (rows, 8): Monday..Sunday, then unseen
    device_share: CategoryTable
    event_share: CategoryTable
    dow_share: CategoryTable
    frame: pl.DataFrame  # the snapshot itself (outputs quote a few of its columns)
    peers: PeerArrays | None = None  # the peer groups' habits; None without a directory

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return feature_columns(self.peers is not None)

    @property
    def devices(self) -> tuple[str, ...]:
        return self.device_rarity.names

    @property
    def event_types(self) -> tuple[str, ...]:
        return self.event_rarity.names

    @cached_property
    def row_lookup(self) -> tuple[pl.Series, pl.Series]:
        """(user ids, their rows) as Series, for a frame's vectorised lookup: built once per
        snapshot (the batch job compiles one per run and worker), where passing Python
        lists made Polars convert 20,000 ids again in every shard (about 7 ms of 22)."""
        ids = pl.Series(list(self.positions), dtype=pl.String)
        return ids, pl.Series(list(self.positions.values()), dtype=pl.Int64)

    def rows_for(self, user_ids: Sequence[str]) -> tuple[IndexArray, BoolArray]:
        """Each user's snapshot row (the population row for an unknown user) and whether known."""
        pop, positions = self.population, self.positions
        rows = np.fromiter((positions.get(u, pop) for u in user_ids), dtype=np.intp, count=len(user_ids))
        return rows, rows != pop


@dataclass(frozen=True, eq=False)
class PeerArrays:
    """A snapshot's peer-group habits per row (NaN: the user has no usable peer group).

    ``device_rarity`` is ``(rows, devices + 1)``: ``ln(p_population / p_group)`` of each
    device, clipped to [0, RARITY_CLIP] (0 for an unknown device or no group);
    ``download_rarity`` the same for downloads. Logarithms are taken here, once, so the
    batch and the API gather the same bits.
    """

    hour_mean: FloatArray
    hour_spread: FloatArray
    device_rarity: FloatArray
    download_rarity: FloatArray


def _column(frame: pl.DataFrame, name: str) -> FloatArray:
    """A snapshot column as float64 with NaN for null."""
    return frame[name].cast(pl.Float64).to_numpy().astype(np.float64, copy=True)


_SCALAR_INPUTS = (
    "mean_log_duration", "sd_log_duration", "mean_log_actions", "sd_log_actions", "hour_mean",
    "hour_spread", "pop_mean_log_duration", "pop_sd_log_duration", "pop_mean_log_actions",
    "pop_sd_log_actions", "slope_log_duration", "sd_log_duration_given_actions", "n_sessions", "n_events",
    "share_prior_device", "share_prior_event", "history_days", "usual_hour_start", "usual_hour_length",
)


def required_columns(devices: Sequence[str], events: Sequence[str]) -> list[str]:
    """The snapshot columns the features read, for categories ``devices`` and ``events``."""
    cols = ["user_id", *_SCALAR_INPUTS, *(f"unseen_rarity_{k}" for k in ("device", "event", "hour", "dow"))]
    cols += [rarity_col("hour", hour_label(h)) for h in HOURS]
    for d in WEEKDAYS:
        cols += [rarity_col("dow", d), share_col("dow", d)]
    cols += [share_col("device", d) for d in devices] + [share_col("event", e) for e in events]
    return cols


def _table(frame: pl.DataFrame, names: Sequence[str], columns: Sequence[str],
           other: FloatArray, with_missing: bool = False) -> CategoryTable:
    values = np.column_stack([*(_column(frame, c) for c in columns), other]) if frame.height else \
        np.zeros((0, len(columns) + 1))
    missing = None
    if with_missing:
        flags = [frame[c].is_null().to_numpy() for c in columns]
        missing = np.column_stack([*flags, np.zeros(frame.height, dtype=bool)]) if frame.height else \
            np.zeros((0, len(columns) + 1), dtype=bool)
    return CategoryTable(tuple(names), np.ascontiguousarray(values), missing)


_log1p = ArrayMath.log1p


def _expm1_of_exp(values: FloatArray) -> FloatArray:
    """``exp(x) - 1`` as the former expressions computed it (exp, then subtract)."""
    values = np.asarray(values, dtype=np.float64)
    return pl.Series(values).exp().to_numpy() - 1.0


def finite(values: Values, low: float, high: float, xp: Math = ARRAYS) -> Values:
    """Missing or NaN counts as "no deviation" (0); the result is clipped to [low, high].

    Plain ufuncs rather than ``np.clip`` / ``np.nan_to_num``, which cost several
    microseconds each on the API's one-event arrays.
    """
    if low == 0.0:  # fmax maps NaN to the other operand: NaN -> 0 and the floor in one call
        return xp.fmin(xp.fmax(values, 0.0), high)
    values = xp.where(xp.isnan(values), 0.0, values)
    return xp.minimum(xp.maximum(values, low), high)


def _scalars(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per-row quantities every event of the row's user reuses, derived once per snapshot."""
    col = {name: _column(frame, name) for name in _SCALAR_INPUTS}
    download_share, download_rarity = share_col("event", DOWNLOAD), rarity_col("event", DOWNLOAD)
    for name in (download_share, download_rarity):  # present when downloads are a known category
        col[name] = _column(frame, name) if name in frame.columns else np.full(frame.height, np.nan)
    start = col["usual_hour_start"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "mean_log_duration": col["mean_log_duration"], "sd_log_duration": col["sd_log_duration"],
            "mean_log_actions": col["mean_log_actions"], "sd_log_actions": col["sd_log_actions"],
            "hour_mean": col["hour_mean"], "hour_spread": col["hour_spread"],
            "slope_log_duration": col["slope_log_duration"],
            "sd_log_duration_given_actions": col["sd_log_duration_given_actions"],
            "pop_mean_log_duration": col["pop_mean_log_duration"],
            "pop_sd_log_duration": np.clip(col["pop_sd_log_duration"], POPULATION_SD_FLOOR, None),
            "pop_mean_log_actions": col["pop_mean_log_actions"],
            "pop_sd_log_actions": np.clip(col["pop_sd_log_actions"], POPULATION_SD_FLOOR, None),
            # first use of a device / event type weighs n / (n + prior): how established the habit is
            "first_use_device": col["n_sessions"] / (col["n_sessions"] + col["share_prior_device"]),
            "first_use_event": col["n_events"] / (col["n_events"] + col["share_prior_event"]),
            "log_history_days": finite(_log1p(col["history_days"]), 0.0, math.inf),
            "median_session_sec": np.clip(_expm1_of_exp(col["mean_log_duration"]), 0.0, None),
            "median_actions": np.clip(_expm1_of_exp(col["mean_log_actions"]), 0.0, None),
            "usual_hour_start": start,
            "usual_hour_end": np.fmod(start + col["usual_hour_length"], 24.0),
            "download_rarity": finite(col[download_rarity], 0.0, RARITY_CLIP),
            "download_share": col[download_share],
            "download_share_missing": (frame[download_share].is_null().to_numpy()
                                       if download_share in frame.columns else np.ones(frame.height, dtype=bool)),
        }


def compile_baselines(frame: pl.DataFrame) -> CompiledBaselines:
    """Arrays of a baseline snapshot (``user_baselines``: unique users plus the population row)."""
    devices = categories_in(frame.columns, "rarity_device_")
    events = categories_in(frame.columns, "rarity_event_")
    missing = [c for c in required_columns(devices, events) if c not in frame.columns]
    if missing:
        raise ValueError(f"baseline snapshot lacks the columns {', '.join(missing)} "
                         f"(present: {', '.join(frame.columns)})")
    ids = frame["user_id"].cast(pl.String).to_list()
    positions = {uid: i for i, uid in enumerate(ids) if uid != POPULATION_USER}
    if POPULATION_USER not in ids:
        raise ValueError(f"baseline snapshot has no population row ({POPULATION_USER!r})")
    if len(positions) != len(ids) - 1:
        raise ValueError("baseline snapshot has duplicate user_id rows")
    zeros = np.zeros(frame.height)

    def unseen(kind: str) -> FloatArray:
        return _column(frame, f"unseen_rarity_{kind}")

    hours = [rarity_col("hour", hour_label(h)) for h in HOURS]
    days = [rarity_col("dow", d) for d in WEEKDAYS]
    population = ids.index(POPULATION_USER)
    return CompiledBaselines(
        user_ids=tuple(ids), positions=positions, population=population,
        scalars=_scalars(frame),
        device_rarity=_table(frame, devices, [rarity_col("device", d) for d in devices], unseen("device")),
        event_rarity=_table(frame, events, [rarity_col("event", e) for e in events], unseen("event")),
        hour_rarity=_table(frame, [], hours, unseen("hour")).values,
        dow_rarity=_table(frame, [], days, unseen("dow")).values,
        device_share=_table(frame, devices, [share_col("device", d) for d in devices], zeros, True),
        event_share=_table(frame, events, [share_col("event", e) for e in events], zeros, True),
        dow_share=_table(frame, [str(d) for d in WEEKDAYS], [share_col("dow", d) for d in WEEKDAYS],
                         zeros, True),
        frame=frame,
        peers=_peer_arrays(frame, devices, population) if "peer_hour_mean" in frame.columns else None,
    )


def _peer_rarity(frame: pl.DataFrame, name: str, population: int) -> FloatArray:
    """``ln(p_population / p_group)`` of one category per row, clipped; 0 where unknown."""
    group = _column(frame, f"peer_{name}")
    if not frame.height:
        return group
    ratio = _column(frame, name)[population] / group
    nats = pl.Series(ratio, dtype=pl.Float64, nan_to_null=False).log().to_numpy()
    clipped: FloatArray = finite(nats, 0.0, RARITY_CLIP)
    return clipped


def _peer_arrays(frame: pl.DataFrame, devices: Sequence[str], population: int) -> PeerArrays:
    """The peer-group columns of a snapshot (``baselines.peer_columns``) as arrays."""
    missing = [c for c in ("peer_hour_spread", *(f"peer_{prob_col('device', d)}" for d in devices))
               if c not in frame.columns]
    if missing:
        raise ValueError(f"baseline snapshot has peer_hour_mean but lacks the columns {', '.join(missing)}")
    rarities = [_peer_rarity(frame, prob_col("device", d), population) for d in devices]
    download = prob_col("event", DOWNLOAD)
    return PeerArrays(
        hour_mean=_column(frame, "peer_hour_mean"), hour_spread=_column(frame, "peer_hour_spread"),
        device_rarity=np.column_stack([*rarities, np.zeros(frame.height)]) if frame.height else
        np.zeros((0, len(devices) + 1)),
        download_rarity=_peer_rarity(frame, download, population) if f"peer_{download}" in frame.columns
        else np.zeros(frame.height),
    )


@dataclass(frozen=True, eq=False)
class EventColumns:
    """What the features read from the events, as arrays aligned by event.

    ``hour`` / ``weekday`` are floats with NaN when unknown; ``device`` / ``event_type``
    are codes from ``CategoryTable.codes``; ``rows`` / ``known`` from ``rows_for``.
    """

    rows: IndexArray
    known: BoolArray
    duration: FloatArray
    actions: FloatArray
    hour: FloatArray
    weekday: FloatArray
    device: IndexArray
    event_type: IndexArray

    def __len__(self) -> int:
        return len(self.rows)


def event_columns(baselines: CompiledBaselines, user_ids: Sequence[str], event_types: Sequence[str | None],
                  device_types: Sequence[str | None], duration: Sequence[float] | np.ndarray,
                  actions: Sequence[float] | np.ndarray, hour: Sequence[float] | np.ndarray,
                  weekday: Sequence[float] | np.ndarray) -> EventColumns:
    """The arrays of ``EventColumns`` from plain per-event values (missing hour/day: NaN)."""
    rows, known = baselines.rows_for(user_ids)
    return EventColumns(
        rows=rows, known=known,
        duration=np.asarray(duration, dtype=np.float64), actions=np.asarray(actions, dtype=np.float64),
        hour=np.asarray(hour, dtype=np.float64), weekday=np.asarray(weekday, dtype=np.float64),
        device=baselines.device_rarity.codes(device_types),
        event_type=baselines.event_rarity.codes(event_types),
    )


@dataclass(frozen=True, eq=False, slots=True)
class EventRow:
    """One event's ``EventColumns`` as plain values (the single event of a ``/predict``):
    the same fields, each a Python scalar, for the kernel's ``FLOATS`` form."""

    rows: int
    known: bool
    duration: float
    actions: float
    hour: float
    weekday: float
    device: int
    event_type: int


def event_row(baselines: CompiledBaselines, user_id: str, event_type: str | None, device_type: str | None,
              duration: float, actions: float, hour: float, weekday: float) -> EventRow:
    """``event_columns`` of one event, as plain values (missing hour/day: NaN)."""
    pop = baselines.population
    row = baselines.positions.get(user_id, pop)
    return EventRow(
        rows=row, known=row != pop, duration=float(duration), actions=float(actions), hour=float(hour),
        weekday=float(weekday), device=baselines.device_rarity.code(device_type),
        event_type=baselines.event_rarity.code(event_type),
    )


Events = EventColumns | EventRow


def _category_index(values: Values, count: int, xp: Math) -> Values:
    """Integer part of an hour or weekday as a table column; NaN or out of range: ``count``."""
    whole = xp.trunc(values)  # NaN stays NaN and fails both comparisons below
    return xp.to_index(xp.where((whole >= 0) & (whole < count), whole, count))


def surprise(z: Values) -> Values:
    """Gaussian surprise z^2/2 in nats: the common unit of every deviation feature."""
    return z * z / 2.0


def beyond(nats: Values, noise: float, xp: Math = ARRAYS) -> Values:
    """The part of a surprise above its noise level; ordinary wobble becomes exactly 0.

    A forest spends splits on whatever varies; folding every user's everyday variation
    into a single point at 0 leaves it nothing to isolate there, so its splits go to the
    deviations that matter (see docs/features.md for the measured effect).
    """
    return xp.maximum(nats - noise, 0.0)  # NaN stays NaN, as with clip


def _z(value: Values, mean: Values, sd: Values, low: float, xp: Math) -> Values:
    return finite(xp.div(value - mean, sd), low, Z_CLIP, xp)


def _circular_distance(hour: Values, center: Values, xp: Math) -> Values:
    diff = xp.fmod(xp.abs(hour - center), 24.0)
    return xp.fmin(diff, 24.0 - diff)


def _first_use(table: CategoryTable, rows: Values, codes: Values, known: Values, weight: np.ndarray,
               xp: Math) -> Values:
    """The user's weight when a known user has never used this category (share missing or 0)."""
    assert table.missing is not None
    share = xp.gather2(table.values, rows, codes)
    never = known & (xp.gather2(table.missing, rows, codes) | (share <= 0.0))
    return xp.where(never, xp.gather(weight, rows), 0.0)


def _total(parts: list[Values]) -> Values:
    """Sum in the association Polars' ``sum_horizontal`` uses (halves, left half n // 2)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 7:  # the deviation columns, written out (the recursion costs more than the adds)
        a, b, c, d, e, f, g = parts
        return (a + (b + c)) + ((d + e) + (f + g))
    half = len(parts) // 2
    return _total(parts[:half]) + _total(parts[half:])


def feature_arrays(baselines: CompiledBaselines, events: EventColumns) -> dict[str, np.ndarray]:
    """Every FEATURE_COLUMNS and CONTEXT_COLUMNS value of the events, as arrays.

    Row-local: an event's values depend only on its own fields and its user's row, so
    one event posted to the API gets exactly what the nightly job computed for it.
    Formulas and their reasons: docs/features.md.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _features(baselines, events, ARRAYS)


def feature_values(baselines: CompiledBaselines, event: EventRow) -> dict[str, Values]:
    """``feature_arrays`` of one event, as plain Python values: the same formulas (one
    kernel, ``_features``) on floats, about ten times faster than on one-element arrays."""
    return _features(baselines, event, FLOATS)


def _features(baselines: CompiledBaselines, events: Events, xp: Math) -> dict[str, Values]:
    """The one definition of the features and context, in ``xp``'s arithmetic."""
    s, rows, known = baselines.scalars, events.rows, events.known
    log_duration, log_actions = xp.log1p(events.duration), xp.log1p(events.actions)
    hour_index, day_index = _category_index(events.hour, 24, xp), _category_index(events.weekday, 7, xp)

    def at(name: str) -> Values:
        return xp.gather(s[name], rows)

    # the user's own log length for a session with this many actions (their line of log
    # length on log actions): what the session's length is compared with given its activity.
    line, line_at = _line_within_usual_actions(log_actions, at("mean_log_duration"), at("slope_log_duration"),
                                               at("mean_log_actions"), at("sd_log_actions"), xp)
    # At least 0 (a 0 s session): a steep line must not call a 0 s session long
    # (NaN stays NaN: no information; -0.0 stays, as in Polars' clip)
    expected = xp.where(line < 0.0, 0.0, line)
    out: dict[str, Values] = {
        "known_user": known,
        "session_length_z": _z(log_duration, at("mean_log_duration"), at("sd_log_duration"), -Z_CLIP, xp),
        "actions_z": _z(log_actions, at("mean_log_actions"), at("sd_log_actions"), -Z_CLIP, xp),
        "length_for_actions_z": _z(log_duration, expected, at("sd_log_duration_given_actions"), -Z_CLIP, xp),
        "user_expected_log_session": expected,
        "user_expected_for_log_actions": line_at,
        "hour_z": finite(xp.div(_circular_distance(events.hour, at("hour_mean"), xp), at("hour_spread")),
                         0.0, HOUR_DEVIATION_CLIP, xp),
        "device_rarity_nats": finite(xp.gather2(baselines.device_rarity.values, rows, events.device),
                                     0.0, RARITY_CLIP, xp),
        "event_type_rarity_nats": finite(xp.gather2(baselines.event_rarity.values, rows, events.event_type),
                                         0.0, RARITY_CLIP, xp),
        "hour_rarity": xp.gather2(baselines.hour_rarity, rows, hour_index),
        "weekday_rarity": xp.gather2(baselines.dow_rarity, rows, day_index),
    }
    is_download = _is_download(baselines, events, xp)
    out.update(_event_features(baselines, events, out, log_duration, log_actions, is_download, xp))
    out.update(_context(baselines, events, out, log_duration, log_actions, day_index, xp))
    if baselines.peers is not None:
        out.update(_peer_features(baselines.peers, events, out, is_download, xp))
    return out


def _line_within_usual_actions(log_actions: Values, mean_log_duration: Values, slope: Values,
                               mean_log_actions: Values, sd_log_actions: Values,
                               xp: Math) -> tuple[Values, Values]:
    """The user's line at the session's log actions, never below its value at the edge of
    their usual activity (``LINE_RANGE_SDS`` spreads of their mean log actions); and the
    log actions it was read at (the session's own, or the edge), so the reason can say
    which sessions of the user the length is compared with.

    A line fitted over a user's sessions says nothing about activity far outside them.
    Extrapolated, a user whose length grows steeply with actions "expects" a 1-action
    session to last a fraction of a second, and an ordinary 5 s one read as 7 sigmas long
    (found by an attack on uba-features-7). Only that direction is held: where the line
    rises beyond the edge (more actions, a positive slope) it is kept, since holding it
    there would call an ordinary long session with many actions long for its actions (42
    ordinary events of one evaluation week did, holding both ends at 2 spreads), and
    ``actions_excess`` already weighs the many actions. NaN anywhere passes through as
    NaN (no information), an unknown spread of actions too: without the edge the plain line
    is what called short sessions long (``maximum``/``minimum`` propagate NaN, as the
    Polars oracle's order does).
    """
    low = mean_log_actions - LINE_RANGE_SDS * sd_log_actions
    high = mean_log_actions + LINE_RANGE_SDS * sd_log_actions
    held = xp.minimum(xp.maximum(log_actions, low), high)
    line = mean_log_duration + slope * (log_actions - mean_log_actions)
    edge = mean_log_duration + slope * (held - mean_log_actions)
    unknown, beyond = xp.isnan(held), edge > line
    return (xp.where(unknown, held, xp.where(beyond, edge, line)),
            xp.where(unknown, held, xp.where(beyond, held, log_actions)))


def _peer_features(peers: PeerArrays, events: Events, ctx: Mapping[str, Values],
                   is_download: Values, xp: Math) -> dict[str, Values]:
    """The event against its user's peer group, in nats with the own-baseline noise floors.

    A user without a usable group (or an unknown user) has NaN/0 group values, which
    count as no deviation. ``max_surprise`` and ``total_surprise`` keep covering the
    own-baseline deviations only, so they mean the same with and without a directory.
    """
    rows = events.rows
    hour_z = finite(xp.div(_circular_distance(events.hour, xp.gather(peers.hour_mean, rows), xp),
                           xp.gather(peers.hour_spread, rows)), 0.0, HOUR_DEVIATION_CLIP, xp)
    device_nats = xp.gather2(peers.device_rarity, rows, events.device)
    download_nats = _download_surprise(xp.where(is_download, xp.gather(peers.download_rarity, rows), 0.0),
                                       xp.maximum(ctx["actions_z"], 0.0), xp)
    return {
        "peer_hour_deviation": beyond(surprise(hour_z), NOISE_NATS, xp),
        "peer_device_rarity": beyond(device_nats, PEER_RARITY_NOISE_NATS, xp),
        "peer_download_intensity": beyond(download_nats, DOWNLOAD_NOISE_NATS, xp),
    }


def _event_features(baselines: CompiledBaselines, events: Events, ctx: Mapping[str, Values],
                    log_duration: Values, log_actions: Values, is_download: Values,
                    xp: Math) -> dict[str, Values]:
    s, rows, known = baselines.scalars, events.rows, events.known
    download_rarity = xp.where(is_download, xp.gather(s["download_rarity"], rows), 0.0)
    actions_up = xp.maximum(ctx["actions_z"], 0.0)
    download_surprise = _download_surprise(download_rarity, actions_up, xp)
    first_use = (_first_use(baselines.device_share, rows, events.device, known, s["first_use_device"], xp)
                 + _first_use(baselines.event_share, rows, events.event_type, known, s["first_use_event"], xp))
    out = {
        "log_session_duration": finite(log_duration, 0.0, math.inf, xp),
        "log_events_in_session": finite(log_actions, 0.0, math.inf, xp),
        "event_hour": finite(events.hour, 0.0, 23.0, xp),
        "event_weekday": finite(events.weekday, 0.0, 6.0, xp),
        "event_type_code": finite(xp.to_float(events.event_type), 0.0, len(baselines.event_types), xp),
        "device_code": finite(xp.to_float(events.device), 0.0, len(baselines.devices), xp),
        "session_length_excess": beyond(surprise(xp.maximum(ctx["session_length_z"], 0.0)), NOISE_NATS, xp),
        "actions_excess": beyond(surprise(actions_up), NOISE_NATS, xp),
        "length_for_actions_excess": beyond(surprise(xp.maximum(ctx["length_for_actions_z"], 0.0)),
                                            NOISE_NATS, xp),
        "hour_deviation": beyond(surprise(ctx["hour_z"]), NOISE_NATS, xp),
        "device_rarity": beyond(ctx["device_rarity_nats"], RARITY_NOISE_NATS, xp),
        "event_type_rarity": beyond(ctx["event_type_rarity_nats"], RARITY_NOISE_NATS, xp),
        "download_intensity": beyond(download_surprise, DOWNLOAD_NOISE_NATS, xp),
        "time_of_week_rarity": beyond(ctx["weekday_rarity"], RARITY_NOISE_NATS, xp),
        "first_use": finite(first_use, 0.0, FIRST_USE_CLIP, xp),
        "download_surprise": download_surprise,
        # an unknown user has no history of their own: 0 days, whatever the population's
        "log_history_days": xp.where(known, xp.gather(s["log_history_days"], rows), 0.0),
    }
    # only the weekday rarity can be missing (a snapshot without it); the others are
    # built from clipped values. A missing one counts as 0 in the total, is skipped by the max.
    deviations = [out[c] for c in DEVIATION_COLUMNS]
    top = deviations[0]
    for value in deviations[1:]:
        top = xp.fmax(top, value)
    out["max_surprise"] = top
    deviations[-1] = xp.where(xp.isnan(deviations[-1]), 0.0, deviations[-1])
    out["total_surprise"] = _total(deviations)
    return out


def _download_surprise(rarity: Values, actions_up: Values, xp: Math) -> Values:
    """A download's rarity plus the surprise of its session's extra actions, only where
    downloads are rarer than expected: a spree is rare downloads in a busy session."""
    return xp.where(rarity > 0, rarity + surprise(actions_up), 0.0)


def _is_download(baselines: CompiledBaselines, events: Events, xp: Math) -> Values:
    if DOWNLOAD not in baselines.event_types:
        return xp.falses(events.rows)
    return events.event_type == baselines.event_types.index(DOWNLOAD)


def _context(baselines: CompiledBaselines, events: Events, ctx: Mapping[str, Values],
             log_duration: Values, log_actions: Values, day_index: Values, xp: Math) -> dict[str, Values]:
    """Plain quantities the reasons quote (user's median session, usual hours, shares)."""
    s, rows = baselines.scalars, events.rows

    def at(name: str) -> Values:
        return xp.gather(s[name], rows)

    length_z = _z(log_duration, at("pop_mean_log_duration"), at("pop_sd_log_duration"), 0.0, xp)
    actions_z = _z(log_actions, at("pop_mean_log_actions"), at("pop_sd_log_actions"), 0.0, xp)
    return {
        "user_median_session_sec": at("median_session_sec"),
        "user_median_actions": at("median_actions"),
        "user_usual_hour_start": at("usual_hour_start"),
        "user_usual_hour_end": at("usual_hour_end"),
        "user_device_share": _share(baselines.device_share, rows, events.device, xp),
        "user_event_type_share": _share(baselines.event_share, rows, events.event_type, xp),
        "user_download_share": xp.where(at("download_share_missing"), math.nan, at("download_share")),
        "user_weekday_share": _share(baselines.dow_share, rows, day_index, xp),
        "global_extremity": xp.fmax(length_z, actions_z),
        "global_by_actions": actions_z > length_z,
    }


def _share(table: CategoryTable, rows: Values, codes: Values, xp: Math) -> Values:
    assert table.missing is not None
    return xp.where(xp.gather2(table.missing, rows, codes), math.nan, xp.gather2(table.values, rows, codes))
