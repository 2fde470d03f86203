"""Synthetic data: realistic per-user structure and anomalies that are contextual by construction."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal
from scipy import stats

from jobs.cli import cli
from uba.errors import UserError
from uba.generate import (
    CONTEXTUAL_KINDS,
    EVENT_KINDS,
    GenerationOptions,
    SyntheticData,
    anomalies,
    generate_dataset,
    generate_events,
    parse_persona_mix,
)
from uba.generate.personas import draw_users
from uba.generate.sessions import NORMAL, active_session_counts, epoch_us, sessions_from_counts
from uba.schema import EVENT_SCHEMA

START = date(2026, 3, 2)  # a Monday


def _generate(**kw: object) -> SyntheticData:
    options = {"users": 80, "days": 7, "start": START, "seed": 11, **kw}
    return generate_dataset(GenerationOptions(**options))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    """Big enough for a few dozen anomalous sessions, small enough to stay fast (~20k events)."""
    return _generate(users=200, days=14, seed=5)


@pytest.fixture(scope="module")
def joined(data: SyntheticData) -> pl.DataFrame:
    return (
        data.events.join(data.labels.select("event_id", "kind", "is_anomaly"), on="event_id")
        .join(data.users.select("user_id", "persona"), on="user_id")
    )


@pytest.fixture(scope="module")
def normal(joined: pl.DataFrame) -> pl.DataFrame:
    """Events of untouched sessions (a spree's unlabelled rows still belong to an edited one)."""
    edited = joined.filter(pl.col("is_anomaly")).select("session_id").unique()
    return joined.join(edited, on="session_id", how="anti")


def _sessions(events: pl.DataFrame) -> pl.DataFrame:
    """One row per session: first/last event type, start, end, shared fields."""
    return events.sort("timestamp", "event_id").group_by("session_id").agg(
        pl.col("user_id").first(),
        pl.col("event_type").first().alias("first_type"),
        pl.col("event_type").last().alias("last_type"),
        pl.col("timestamp").min().alias("start"),
        pl.col("timestamp").max().alias("end"),
        pl.len().alias("rows"),
        *(pl.col(c).n_unique().alias(f"{c}_values") for c in ("session_duration_sec", "events_in_session", "device_type", "user_id")),
        pl.col("session_duration_sec").first(),
        pl.col("events_in_session").first(),
    )


# --- shape and determinism ------------------------------------------------------------


def test_same_options_give_identical_frames_and_another_seed_does_not() -> None:
    first, second = _generate(), _generate()
    assert_frame_equal(first.events, second.events)
    assert_frame_equal(first.labels, second.labels)
    assert_frame_equal(first.users, second.users)
    other = _generate(seed=12)
    assert other.events["event_id"].to_list()[:5] != first.events["event_id"].to_list()[:5]


def test_generate_events_returns_events_and_labels_of_the_same_run() -> None:
    events, labels = generate_events(40, 3, START, 0.02, 3)
    assert events.height == labels.height > 0
    assert events["event_id"].to_list() == labels["event_id"].to_list()


def test_defaults_give_about_70000_events_with_the_stored_schema() -> None:
    events, labels = generate_events(500, 21, date(2026, 3, 1), 0.02, 42)
    assert 60_000 <= events.height <= 80_000
    assert events.schema == pl.Schema(EVENT_SCHEMA)
    assert events["event_id"].is_unique().all()
    assert events["user_id"].str.contains(r"^u\d{5}$").all()
    assert events["user_id"].n_unique() >= 490  # nearly everyone is active in three weeks
    assert events["timestamp"].dt.date().min() >= date(2026, 3, 1)
    assert events["timestamp"].dt.date().max() <= date(2026, 3, 21)
    assert events["timestamp"].is_sorted()
    assert set(events["event_type"].unique()) == {"login", "logout", "view", "click", "download"}
    assert set(events["device_type"].unique()) == {"desktop", "mobile"}


def test_hour_and_day_agree_with_the_utc_timestamp(data: SyntheticData) -> None:
    ev = data.events
    assert (ev["hour_of_day"] == ev["timestamp"].dt.hour()).all()
    assert (ev["day_of_week"] == ev["timestamp"].dt.weekday() - 1).all()


def test_sessions_run_from_login_to_logout_and_share_their_fields(data: SyntheticData) -> None:
    sessions = _sessions(data.events)
    assert (sessions["first_type"] == "login").all()
    assert (sessions["last_type"] == "logout").all()
    assert (sessions["rows"] == sessions["events_in_session"]).all()
    for column in ("session_duration_sec", "events_in_session", "device_type", "user_id"):
        assert (sessions[f"{column}_values"] == 1).all(), column
    span = (sessions["end"] - sessions["start"]).dt.total_microseconds() / 1e6
    assert np.allclose(span.to_numpy(), sessions["session_duration_sec"].to_numpy(), atol=1e-3)
    assert data.events.filter(pl.col("event_type") == "login").height == sessions.height


def test_a_user_never_has_two_sessions_at_once(data: SyntheticData) -> None:
    sessions = _sessions(data.events).sort("user_id", "start")
    overlap = sessions.with_columns(pl.col("end").shift().over("user_id").alias("prev_end")).filter(
        pl.col("start") <= pl.col("prev_end")
    )
    assert overlap.height == 0


# --- per-user structure ---------------------------------------------------------------


def test_users_differ_in_typical_hour_and_session_length(normal: pl.DataFrame) -> None:
    sessions = (
        normal.filter(pl.col("event_type") == "login")
        .with_columns(
            pl.col("session_duration_sec").log().alias("log_len"),
            (pl.col("hour_of_day").cast(pl.Float64) * 2 * np.pi / 24).alias("angle"),
        )
    )
    busy = sessions.group_by("user_id").len().filter(pl.col("len") >= 5)["user_id"]
    groups = sessions.filter(pl.col("user_id").is_in(busy.implode())).partition_by("user_id")
    assert len(groups) >= 100
    _, p_length = stats.kruskal(*(g["log_len"].to_numpy() for g in groups))
    _, p_hour_sin = stats.kruskal(*(np.sin(g["angle"].to_numpy()) for g in groups))
    _, p_hour_cos = stats.kruskal(*(np.cos(g["angle"].to_numpy()) for g in groups))
    assert p_length < 1e-20 and p_hour_sin < 1e-20 and p_hour_cos < 1e-20
    # most of the spread of session length is between users, not within them
    per_user = pl.concat(groups).group_by("user_id").agg(
        pl.col("log_len").mean().alias("mean"), pl.col("log_len").var().alias("var")
    )
    assert per_user["mean"].var() > 1.5 * per_user["var"].mean()


def test_personas_keep_their_hours_and_weekly_rhythm(normal: pl.DataFrame) -> None:
    logins = normal.filter(pl.col("event_type") == "login")
    office = logins.filter(pl.col("persona") == "office")
    night = logins.filter(pl.col("persona") == "night")
    weekend = logins.filter(pl.col("persona") == "weekend")
    assert office["hour_of_day"].is_between(8, 17).mean() > 0.9
    assert ((night["hour_of_day"] >= 21) | (night["hour_of_day"] <= 6)).mean() > 0.9
    assert (office["day_of_week"] >= 5).mean() < 0.05
    assert (weekend["day_of_week"] >= 5).mean() > 0.6


def test_users_have_their_own_device_and_download_habits(data: SyntheticData, normal: pl.DataFrame) -> None:
    habits = data.users.select("user_id", "device_habit", "download_habit")
    per_user = normal.group_by("user_id").agg(
        (pl.col("device_type") == "mobile").mean().alias("mobile"),
        (pl.col("event_type") == "download").mean().alias("downloads"),
    ).join(habits, on="user_id")
    assert (per_user.filter(pl.col("device_habit") == "desktop_only")["mobile"] == 0).all()
    assert (per_user.filter(pl.col("device_habit") == "mobile_only")["mobile"] == 1).all()
    rare = per_user.filter(pl.col("download_habit") == "rare")["downloads"]
    heavy = per_user.filter(pl.col("download_habit") == "heavy")["downloads"]
    assert rare.median() < 0.01 and rare.quantile(0.9) < 0.03
    assert heavy.median() > 0.08


# --- anomalies ------------------------------------------------------------------------


def _own_ratio(joined: pl.DataFrame, normal: pl.DataFrame, kind: str, column: str) -> pl.DataFrame:
    """Each anomalous session of ``kind``: ``column`` over the user's own median of it per
    normal session (every session once; the lower median, as the generator takes)."""
    def per_session(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.group_by("session_id").agg(pl.col("user_id").first(), pl.col(column).first()).with_columns(
            (pl.col(column) - 2 if column == "events_in_session" else pl.col(column)).cast(pl.Float64).alias("value"))
    own = per_session(normal).group_by("user_id").agg(
        pl.col("value").quantile(0.5, interpolation="lower").alias("own"))
    return (
        per_session(joined.filter(pl.col("kind") == kind)).join(own, on="user_id")
        .with_columns((pl.col("value") / pl.col("own")).alias("ratio"))
    )


@pytest.mark.parametrize(("kind", "column", "factor"), [("long_session", "session_duration_sec", (3.0, 6.0)),
                                                        ("action_burst", "events_in_session", (5.0, 10.0))])
def test_contextual_values_are_globally_ordinary_and_a_modest_multiple_of_the_users_own(
    joined: pl.DataFrame, normal: pl.DataFrame, kind: str, column: str, factor: tuple[float, float]
) -> None:
    """A burst has 5-10x the user's median actions per session (events_in_session - 2), a
    long session 3-6x their median length, both under the population's 99th percentile.
    The generator takes the median over the sessions still normal when it edits; later
    kinds and dropped overlaps can move a user's median by a session, so the check on the
    final data allows 20% either way and holds the median multiple to the range."""
    scored = _own_ratio(joined, normal, kind, column)
    assert scored.height >= 3
    high = normal[column].quantile(0.99)
    assert (scored["value"] + (2 if column == "events_in_session" else 0) <= high).all()
    assert scored["ratio"].is_between(0.8 * factor[0], 1.2 * factor[1]).all(), scored.sort("ratio")
    assert factor[0] <= scored["ratio"].median() <= factor[1]


def test_bursts_and_long_sessions_are_the_factor_of_the_own_median_when_injected() -> None:
    """At injection the multiple is exact: every eligible proposal is inside its range."""
    rng = np.random.default_rng(3)
    users = draw_users(120, parse_persona_mix("office=0.5,light=0.3,power=0.2"), 0, rng)
    start = epoch_us(START)
    sessions = sessions_from_counts(users, active_session_counts(users, START, 14, rng), start, rng)
    assert (sessions.kind == NORMAL).all()
    weights = sessions.n_events
    median_duration = anomalies.user_session_median(sessions.user, sessions.duration_sec, users.count)
    median_actions = anomalies.user_session_median(sessions.user, sessions.n_events - 2, users.count)
    ctx = anomalies._Context(
        users, sessions, start, start + 14 * 86_400_000_000,
        anomalies.weighted_quantile(sessions.duration_sec, weights, 0.99),
        anomalies.weighted_quantile(sessions.n_events, weights, 0.99),
        float(sessions.duration_sec.max()), median_duration, median_actions, rng,
    )
    ok, changes = anomalies._propose_action_burst(ctx)
    ratio = (changes["n_events"][ok] - 2) / median_actions[sessions.user[ok]]
    assert ok.sum() >= 20 and ratio.min() >= 5.0 and ratio.max() <= 10.0
    assert changes["n_events"][ok].max() <= ctx.events_ceiling
    ok, changes = anomalies._propose_long_session(ctx)
    ratio = changes["duration_sec"][ok] / median_duration[sessions.user[ok]]
    assert ok.sum() >= 20 and ratio.min() >= 3.0 - 1e-3 and ratio.max() <= 6.0 + 1e-3
    assert changes["duration_sec"][ok].max() <= ctx.duration_ceiling


def _circular_distance(hours: pl.Expr, centre: pl.Expr) -> pl.Expr:
    d = (hours - centre) % 24
    return pl.min_horizontal(d, 24 - d)


def test_off_hours_are_far_from_the_users_hours_yet_normal_for_night_shift(
    joined: pl.DataFrame, normal: pl.DataFrame
) -> None:
    angle = pl.col("hour_of_day").cast(pl.Float64) * 2 * np.pi / 24
    centre = normal.group_by("user_id").agg(angle.sin().mean().alias("s"), angle.cos().mean().alias("c")).select(
        "user_id", (pl.arctan2("s", "c") * 24 / (2 * np.pi)).alias("centre")
    )
    hour = pl.col("hour_of_day").cast(pl.Float64)
    spread = normal.join(centre, on="user_id").group_by("user_id").agg(
        (1.4826 * _circular_distance(hour, pl.col("centre")).median()).alias("spread")
    )
    off = (
        joined.filter(pl.col("kind") == "off_hours")
        .join(centre, on="user_id").join(spread, on="user_id")
        .with_columns(_circular_distance(hour, pl.col("centre")).alias("distance"))
    )
    assert off["session_id"].n_unique() >= 3
    assert (off["distance"] > 3 * off["spread"].clip(lower_bound=0.5)).all()
    assert (off["distance"] >= 8).all()
    night_share = normal.filter(pl.col("persona") == "night")["hour_of_day"].value_counts(normalize=True)
    night_hours = night_share.filter(pl.col("proportion") >= 0.02)["hour_of_day"]
    office_off = off.filter(pl.col("persona") == "office")
    assert office_off.height > 0
    assert office_off["hour_of_day"].is_in(night_hours.implode()).all()


def test_new_device_is_one_the_user_never_uses(joined: pl.DataFrame, normal: pl.DataFrame) -> None:
    new = joined.filter(pl.col("kind") == "new_device").select("user_id", "device_type").unique()
    assert new.height >= 3
    assert new.join(normal.select("user_id", "device_type").unique(), on=["user_id", "device_type"]).height == 0
    shares = joined["device_type"].value_counts(normalize=True)
    assert shares["proportion"].min() > 0.1  # both devices are common globally


def test_download_spree_comes_from_users_who_rarely_download(data: SyntheticData, joined: pl.DataFrame) -> None:
    is_download = (pl.col("event_type") == "download").cast(pl.Float64)
    spree_ids = joined.filter(pl.col("kind") == "download_spree").select("session_id").unique()
    in_spree = joined.join(spree_ids, on="session_id", how="semi")
    spree = in_spree.group_by("session_id", "user_id").agg(is_download.mean().alias("share"))
    # the user's own habit: the true parameter, and every event outside sprees (other kinds
    # keep the download share); a light user's 30 events can hold one download by chance,
    # so the realised share is checked over all spree users together
    outside = joined.join(spree_ids, on="session_id", how="anti").join(
        spree.select("user_id").unique(), on="user_id", how="semi")
    habit = data.users.join(spree.select("user_id").unique(), on="user_id", how="semi")
    assert spree.height >= 3
    assert (habit["download_share"] <= 0.008).all()
    assert outside.select(is_download.mean()).item() <= 0.03
    assert (spree["share"] >= 0.5).all()
    assert 0.03 < joined.select(is_download.mean()).item() < 0.2  # downloads are common globally


def test_global_extremes_are_longer_than_every_normal_session(joined: pl.DataFrame, normal: pl.DataFrame) -> None:
    extreme = joined.filter(pl.col("kind") == "global_extreme")
    assert extreme.height > 0
    assert extreme["session_duration_sec"].min() > 1.5 * normal["session_duration_sec"].max()


def test_every_event_of_an_anomalous_session_is_labelled_but_only_a_spree_s_downloads(
    data: SyntheticData,
) -> None:
    events = data.events.join(data.labels.select("event_id", "kind", "is_anomaly"), on="event_id")
    spree_ids = events.filter(pl.col("kind") == "download_spree").select("session_id").unique()
    per_session = events.join(spree_ids, on="session_id", how="anti").group_by("session_id").agg(
        pl.col("kind").n_unique().alias("kinds"), pl.col("is_anomaly").n_unique().alias("flags")
    )
    assert (per_session["kinds"] == 1).all() and (per_session["flags"] == 1).all()
    spree = events.join(spree_ids, on="session_id", how="semi")
    assert spree.height > spree_ids.height * 8  # whole sessions, not only their labelled rows
    is_download = pl.col("event_type") == "download"
    assert (spree.filter(is_download)["kind"] == "download_spree").all()
    assert not spree.filter(~is_download)["is_anomaly"].any()
    assert spree.filter(~is_download)["kind"].is_null().all()
    assert set(data.labels["kind"].drop_nulls().unique()) == set(EVENT_KINDS)
    assert (data.labels.filter(pl.col("is_anomaly"))["level"] == "event").all()
    assert data.labels.filter(~pl.col("is_anomaly"))["level"].is_null().all()


@pytest.mark.parametrize(("users", "days", "rate", "tolerance"), [(500, 21, 0.02, 0.002), (200, 14, 0.05, 0.004)])
def test_anomaly_share_is_close_to_the_requested_rate(users: int, days: int, rate: float, tolerance: float) -> None:
    _, labels = generate_events(users, days, START, rate, 3)
    assert abs(labels["is_anomaly"].mean() - rate) <= tolerance
    assert labels.filter(pl.col("is_anomaly"))["kind"].is_in(list(CONTEXTUAL_KINDS)).mean() > 0.85


def test_rate_zero_gives_no_anomalies() -> None:
    assert not _generate(anomaly_rate=0.0).labels["is_anomaly"].any()


# --- options --------------------------------------------------------------------------


def test_erratic_users_are_much_noisier_and_carry_no_injected_anomaly() -> None:
    data = _generate(users=100, days=14, erratic_users=4)
    erratic = data.users.filter(pl.col("is_erratic"))["user_id"]
    assert erratic.len() == 4
    ev = data.events.join(data.labels.select("event_id", "kind"), on="event_id")
    angle = pl.col("hour_of_day").cast(pl.Float64) * 2 * np.pi / 24
    resultant = (angle.sin().mean() ** 2 + angle.cos().mean() ** 2).sqrt()
    spread = ev.filter(pl.col("event_type") == "login").group_by("user_id").agg(
        pl.col("session_duration_sec").log().std().alias("length_sd"),
        ((-2 * resultant.log()).sqrt() * 24 / (2 * np.pi)).alias("hour_sd"),  # circular sd, hours
        pl.len().alias("sessions"),
    ).filter(pl.col("sessions") >= 5)
    is_erratic = pl.col("user_id").is_in(erratic.implode())
    noisy, calm = spread.filter(is_erratic), spread.filter(~is_erratic)
    assert noisy.height == 4
    assert noisy["length_sd"].min() > 2 * calm["length_sd"].median()
    assert noisy["hour_sd"].min() > 2 * calm["hour_sd"].median()
    assert ev.filter(is_erratic)["kind"].is_null().all()


def test_shift_makes_every_session_from_that_day_longer_by_the_scale() -> None:
    shift_day = START + timedelta(days=5)
    base = _generate(anomaly_rate=0.0)
    shifted = _generate(anomaly_rate=0.0, shift_from=shift_day, session_scale=3.0)

    def logins(d: SyntheticData) -> pl.DataFrame:
        return d.events.filter(pl.col("event_type") == "login").select("user_id", "timestamp", "session_duration_sec")

    matched = logins(base).join(logins(shifted), on=["user_id", "timestamp"], suffix="_shifted")
    assert matched.height >= 0.95 * logins(shifted).height
    after = matched.filter(pl.col("timestamp").dt.date() >= shift_day)
    before = matched.filter(pl.col("timestamp").dt.date() < shift_day)
    assert after.height > 0 and before.height > 0
    assert (before["session_duration_sec"] == before["session_duration_sec_shifted"]).all()
    ratio = after["session_duration_sec_shifted"] / after["session_duration_sec"]
    assert np.allclose(ratio.to_numpy(), 3.0, rtol=2e-3)


def test_device_shift_moves_the_given_share_of_desktop_sessions_to_mobile() -> None:
    shift_day = START + timedelta(days=4)
    base = _generate(users=300, anomaly_rate=0.0)
    shifted = _generate(users=300, anomaly_rate=0.0, device_shift_from=shift_day, mobile_shift=0.5)

    def logins(d: SyntheticData) -> pl.DataFrame:
        return d.events.filter(pl.col("event_type") == "login").select("user_id", "timestamp", "device_type")

    matched = logins(base).join(logins(shifted), on=["user_id", "timestamp"], suffix="_shifted")
    assert matched.height == logins(base).height == logins(shifted).height  # only devices change
    before = matched.filter(pl.col("timestamp").dt.date() < shift_day)
    after = matched.filter(pl.col("timestamp").dt.date() >= shift_day)
    assert (before["device_type"] == before["device_type_shifted"]).all()
    assert after.filter(pl.col("device_type") == "mobile")["device_type_shifted"].eq("mobile").all()
    desktop = after.filter(pl.col("device_type") == "desktop")
    moved = desktop["device_type_shifted"].eq("mobile").mean()
    assert desktop.height > 200 and 0.4 < moved < 0.6, moved
    # runs without a device shift keep their ids; with one they get their own
    assert _generate(users=300, anomaly_rate=0.0).events["event_id"].equals(base.events["event_id"])
    assert shifted.options.fingerprint() != base.options.fingerprint()


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_device_shift_share_out_of_range_names_the_option(share: float) -> None:
    with pytest.raises(UserError, match="--mobile-shift must be > 0 and <= 1"):
        _generate(device_shift_from=START, mobile_shift=share)


def test_mobile_shift_without_a_date_is_refused_by_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path / "d"), "--users", "5", "--days", "2",
                                      "--mobile-shift", "0.3"])
    assert result.exit_code != 0 and "--mobile-shift only applies together with --device-shift-from" in result.output
    assert not (tmp_path / "d").exists()


def test_user_day_anomalies_appear_only_when_asked() -> None:
    assert "exfiltration_day" not in _generate(users=120, days=10).labels["kind"].drop_nulls().to_list()
    data = _generate(users=120, days=10, user_day_anomalies=3)
    labels = data.labels.filter(pl.col("kind") == "exfiltration_day")
    assert (labels["level"] == "user_day").all()
    planted = labels.select("user_id", "event_date").unique()
    assert planted.height == 3 and planted["user_id"].n_unique() == 3
    assert (planted["event_date"] >= START + timedelta(days=5)).all()  # history exists before it

    daily = data.events.join(data.labels.select("event_id", "kind"), on="event_id").group_by(
        "user_id", pl.col("timestamp").dt.date().alias("event_date")
    ).agg(
        (pl.col("event_type") == "download").sum().alias("downloads"),
        pl.col("session_id").n_unique().alias("sessions"),
        (pl.col("kind") == "exfiltration_day").any().alias("planted"),
    )
    for user in planted["user_id"]:
        days = daily.filter(pl.col("user_id") == user)
        day = days.filter(pl.col("planted")).row(0, named=True)
        usual = days.filter(~pl.col("planted"))["downloads"].mean()
        assert day["downloads"] >= 5 and day["downloads"] >= 4 * max(usual, 0.5)
        assert day["sessions"] >= 5
    per_session = data.events.join(labels.select("event_id"), on="event_id").group_by("session_id").agg(
        (pl.col("event_type") == "download").mean().alias("share")
    )
    assert per_session["share"].median() < 0.6  # each session on its own is unremarkable


def test_persona_mix_sets_the_population() -> None:
    mix = parse_persona_mix("office=1, night=3")
    assert mix == {"office": 0.25, "night": 0.75}
    data = _generate(users=40, persona_mix=mix)
    assert data.users["persona"].value_counts().sort("persona").rows() == [("night", 30), ("office", 10)]


@pytest.mark.parametrize("text", ["office=1,boss=2", "office", "office=x", "office=-1", "office=0"])
def test_bad_persona_mix_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError, match="persona"):
        parse_persona_mix(text)


@pytest.mark.parametrize(("options", "field"), [
    ({"users": 0}, "--users"), ({"days": 0}, "--days"), ({"anomaly_rate": 0.5}, "--anomaly-rate"),
    ({"erratic_users": 81}, "--erratic-users"), ({"session_scale": 0.0}, "--session-scale"),
    ({"user_day_anomalies": 80}, "--user-day-anomalies"),
])
def test_impossible_options_are_user_errors_naming_the_option(options: dict[str, object], field: str) -> None:
    with pytest.raises(UserError, match=field):
        _generate(**options)


# --- the command ----------------------------------------------------------------------


def test_generate_command_writes_events_through_ingest_and_labels_apart(tmp_path: Path) -> None:
    out, csv, jsonl = tmp_path / "data", tmp_path / "ev.csv", tmp_path / "ev.jsonl"
    args = ["generate", "--out", str(out), "--users", "60", "--days", "4", "--start", "2026-03-02",
            "--seed", "9", "--csv", str(csv), "--jsonl", str(jsonl)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "anomalous events" in result.output and "quarantined 0" in result.output

    stored = pl.read_parquet(str(out / "events" / "**" / "*.parquet"), hive_partitioning=True)
    assert not {"kind", "is_anomaly", "level", "persona"} & set(stored.columns)
    assert sorted(p.name for p in (out / "events").iterdir()) == [f"event_date=2026-03-0{d}" for d in range(2, 6)]
    expected = generate_dataset(GenerationOptions(users=60, days=4, start=START, seed=9))
    assert_frame_equal(stored.select(list(EVENT_SCHEMA)).sort("event_id"), expected.events.sort("event_id"))

    labels = pl.read_parquet(out / "labels" / "labels.parquet")
    users = pl.read_parquet(out / "labels" / "users.parquet")
    assert_frame_equal(labels.sort("event_id"), expected.labels.sort("event_id"))
    assert users.height == 60 and "persona" in users.columns
    assert pl.read_csv(csv).height == pl.read_ndjson(jsonl).height == expected.events.height

    again = CliRunner().invoke(cli, args)  # re-running adds nothing: duplicates are recognised
    assert again.exit_code == 0, again.output
    assert pl.read_parquet(str(out / "events" / "**" / "*.parquet")).height == expected.events.height
    assert pl.read_parquet(out / "labels" / "labels.parquet").height == labels.height

    other = CliRunner().invoke(cli, [*args[:-4], "--seed", "10"])
    assert other.exit_code == 1
    assert "another generation" in other.output


def test_generate_command_rejects_scale_without_shift(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path), "--session-scale", "2"])
    assert result.exit_code == 1
    assert "--shift-from" in result.output


# --- multi-day campaigns ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def campaigns() -> SyntheticData:
    return _generate(users=400, days=21, seed=8, campaigns=9, campaigns_from=START + timedelta(days=12))


def _campaign_sessions(data: SyntheticData, kind: str) -> pl.DataFrame:
    """Every session of a campaign user on a campaign day, with its label and the user's habits."""
    planted = data.campaigns.filter(pl.col("kind") == kind)
    labelled = data.labels.filter(pl.col("kind") == kind).select("session_id").unique()
    sessions = data.events.group_by("session_id").agg(
        pl.col("user_id").first(), pl.col("timestamp").min().alias("start"),
        pl.col("session_duration_sec").first(), pl.col("device_type").first(),
        (pl.col("event_type") == "download").sum().alias("downloads"),
        (pl.col("event_type").is_in(["view", "click", "download"])).sum().alias("actions"),
    ).with_columns(pl.col("start").dt.date().alias("day"))
    return (sessions.join(planted, on="user_id")
            .filter(pl.col("day").is_between(pl.col("start_right"), pl.col("end")))
            .join(data.users, on="user_id")
            .with_columns(pl.col("session_id").is_in(labelled["session_id"].implode()).alias("labelled")))


def test_campaigns_are_planted_in_turn_on_their_own_users_inside_the_window(campaigns: SyntheticData) -> None:
    table = campaigns.campaigns
    assert table.height == 9 and table["user_id"].n_unique() == 9
    assert table.group_by("kind").len().sort("kind")["len"].to_list() == [3, 3, 3]
    length = (table["end"] - table["start"]).dt.total_days() + 1
    assert length.is_between(4, 7).all()
    assert (table["start"] >= START + timedelta(days=12)).all() and (table["end"] <= START + timedelta(days=20)).all()
    users = campaigns.users.filter(pl.col("user_id").is_in(table["user_id"].implode()))
    assert not users["is_erratic"].any()
    labelled = campaigns.labels.filter(pl.col("level") == "campaign")
    assert set(labelled["kind"].unique()) == {"slow_exfiltration", "takeover", "insider_drift"}
    inside = labelled.join(table, on=["user_id", "kind"]).filter(
        pl.col("event_date").is_between(pl.col("start"), pl.col("end")))
    assert inside.height == labelled.height, "every campaign label is inside its own campaign"
    days = labelled.select("user_id", "event_date").unique().group_by("user_id").len()
    planned = table.with_columns(((pl.col("end") - pl.col("start")).dt.total_days() + 1).alias("n"))
    assert days.join(planned, on="user_id").filter(pl.col("len") == pl.col("n")).height >= 8, \
        "a campaign is active on (nearly) every one of its days"


def test_takeover_is_the_never_used_device_far_from_the_usual_hours(campaigns: SyntheticData) -> None:
    takeover = _campaign_sessions(campaigns, "takeover").filter(pl.col("labelled"))
    assert takeover.height >= 3
    never = pl.when(pl.col("mobile_share") < 0.5).then(pl.lit("mobile")).otherwise(pl.lit("desktop"))
    assert (takeover["device_type"] == takeover.select(never).to_series()).all()
    hour = takeover["start"].dt.hour().cast(pl.Float64) + takeover["start"].dt.minute() / 60
    away = np.abs(np.mod(hour.to_numpy() - takeover["hour_centre"].to_numpy() + 12, 24) - 12)
    assert (away >= 9).mean() >= 0.9, "about twelve hours from the user's usual start"


def test_insider_drift_and_slow_exfiltration_grow_gradually(campaigns: SyntheticData) -> None:
    drift = _campaign_sessions(campaigns, "insider_drift").filter(pl.col("labelled"))
    ratio = drift["session_duration_sec"] / drift["session_median_sec"]
    assert drift.height >= 6 and ratio.median() > 1.1
    assert (ratio <= 6 * 2.0).all(), "at most twice the user's own spread of lengths, never extreme"
    first = drift.sort("start").group_by("user_id").agg(pl.all().first(), pl.all().last().name.suffix("_last"))
    assert (first["session_duration_sec_last"] / first["session_median_sec_last"]).mean() > \
        (first["session_duration_sec"] / first["session_median_sec"]).mean()

    exfil = _campaign_sessions(campaigns, "slow_exfiltration").filter(pl.col("actions") > 0)
    share = (exfil["downloads"] / exfil["actions"]) / exfil["download_share"]
    assert exfil.height >= 6 and 1.0 < share.median() <= 3.5
    assert (exfil["downloads"] <= exfil["actions"]).all()


def test_no_campaigns_leaves_the_data_as_it_was() -> None:
    plain = _generate(users=120, days=10)
    assert plain.campaigns.height == 0 and "campaign" not in plain.labels["level"].drop_nulls().to_list()
    planted = _generate(users=120, days=10, campaigns=3)
    assert planted.options.fingerprint() != plain.options.fingerprint()
    assert planted.campaigns["start"].min() >= START + timedelta(days=6)  # default: the last week, after history


@pytest.mark.parametrize(("options", "message"), [
    ({"days": 10, "campaigns": 2, "campaigns_from": START + timedelta(days=8)}, "at least 4 days from --campaigns-from"),
    ({"days": 10, "campaigns": 2, "campaigns_from": START + timedelta(days=30)}, "outside the generated window"),
    ({"users": 5, "days": 10, "campaigns": 30}, "no user left whose habits suit"),
])
def test_impossible_campaigns_are_one_line_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        _generate(**options)


def test_generate_stores_the_campaigns_table_once(tmp_path: Path) -> None:
    out = tmp_path / "data"
    args = ["generate", "--out", str(out), "--users", "150", "--days", "14", "--campaigns", "3"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "campaigns: 3 (insider_drift 1, slow_exfiltration 1, takeover 1)" in first.output
    stored = pl.read_parquet(out / "labels" / "campaigns.parquet")
    assert stored.height == 3 and stored.columns == ["user_id", "kind", "start", "end"]
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and pl.read_parquet(out / "labels" / "campaigns.parquet").equals(stored)
    refused = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path / "x"), "--campaigns-from", "2026-03-05"])
    assert refused.exit_code != 0 and "--campaigns-from only applies together with --campaigns" in refused.output
