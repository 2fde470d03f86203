"""Baseline poisoning protection through the real CLI, on hand-built events.

Forty users keep their habits for three weeks (office hours on a desktop or a phone, or
night shifts); from day 22 on, one office desktop user (the victim) also has a 03:00
session on a phone every day, as an attacker who took the account over would. With the protection on, the victim's
alerted days are never learned: the phone stays unseen in their baseline and every
attacker event is flagged on every day. With it off, day 22 is learned, the phone
becomes part of the baseline and the alerts fade. A benign verdict on the first day's
alerts makes that day learned again.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.schema import alert_id

FIRST = date(2026, 2, 1)
TRAIN_END = date(2026, 2, 21)
ATTACK = [date(2026, 2, 22), date(2026, 2, 23), date(2026, 2, 24)]
VICTIM = "victim"
EVENT_TYPES = ("login", "view", "click", "view", "download", "logout")


@dataclass(frozen=True)
class World:
    data_dir: Path
    model_dir: Path

    def args(self, out: Path) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--model-dir", str(self.model_dir), "--output-dir", str(out)]


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, (args[:3], result.output, result.exception)
    return result.output


def _session(rng: random.Random, user: str, day: date, hour: int, device: str, n: int, sid: str) -> list[dict]:
    start = datetime(day.year, day.month, day.day, hour, rng.randrange(60))
    duration = rng.randrange(600, 3600)
    return [{"event_id": f"{sid}-{k}", "user_id": user, "session_id": sid,
             "timestamp": (start + timedelta(seconds=60 * k)).isoformat() + "Z",
             "event_type": EVENT_TYPES[k % len(EVENT_TYPES)], "session_duration_sec": duration,
             "events_in_session": n, "device_type": device} for k in range(n)]


def _habits(u: int) -> tuple[str, tuple[int, int]]:
    """(usual device, usual hours) of user ``u``: office desktops, office phones, night shifts.

    The mix makes a phone at 03:00 normal for the population but unseen for the victim, so
    only the user's own baseline can tell (and learning it can hide it)."""
    return [("desktop", (9, 16)), ("desktop", (9, 16)), ("mobile", (9, 16)), ("desktop", (0, 5))][u % 4]


def _user_day(rng: random.Random, u: int, day: date) -> list[dict]:
    """Two sessions of the user's habit; now and then one on the other device or at another hour."""
    user = VICTIM if u == 0 else f"u{u:02d}"
    device, (first, last) = _habits(u)
    rows = []
    for s in range(2):
        hour, used = rng.randrange(first, last + 1), device
        if u != 0 and rng.random() < 0.05:
            used = "mobile" if device == "desktop" else "desktop"
        if u != 0 and rng.random() < 0.05:
            hour = rng.randrange(24)
        rows += _session(rng, user, day, hour, used, rng.randrange(3, 9), f"{user}-{day}-{s}")
    return rows


def _events() -> list[dict]:
    """Forty users for three weeks and three days; the victim's phone at 03:00 from day 22."""
    rng = random.Random(14)
    rows: list[dict] = []
    for offset in range((ATTACK[-1] - FIRST).days + 1):
        day = FIRST + timedelta(days=offset)
        for u in range(40):
            rows += _user_day(rng, u, day)
        if day in ATTACK:
            rows += _session(rng, VICTIM, day, 3, "mobile", 8, f"attacker-{day}")
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The events ingested and a model trained on the three office weeks."""
    root = tmp_path_factory.mktemp("protection")
    source = root / "events.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in _events()))
    world = World(root / "data", root / "models")
    _cli("ingest", str(source), "--data-dir", str(world.data_dir))
    _cli("train", "--end-date", TRAIN_END.isoformat(), "--window-days", "14",
         "--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir))
    return world


def _score_days(world: World, out: Path, days: list[date], protect: bool) -> None:
    env = {"UBA_BASELINE_PROTECTION__ENABLED": "true" if protect else "false"}
    for day in days:
        _cli("score", "--date", day.isoformat(), *world.args(out), "--in-process", env=env)


def _attacker_flags(out: Path, day: date) -> tuple[int, int]:
    """(flagged, all) attacker events of ``day`` in its published scores."""
    scores = io.scan_partition(out, io.SCORES, day).collect()  # type: ignore[union-attr]
    attacker = scores.filter(pl.col("session_id").str.starts_with("attacker-"))
    return int(attacker["is_anomaly"].sum()), attacker.height


def _mobile_share(world: World, as_of: date) -> float:
    """The victim's share of mobile events in the baseline snapshot ``score`` wrote for ``as_of``."""
    snapshot = io.read_baseline_snapshot(io.baseline_snapshot_path(world.data_dir, as_of))
    return float(snapshot.filter(pl.col("user_id") == VICTIM)["share_device_mobile"].item())


def _manifest(out: Path, day: date) -> dict:
    return json.loads(io.run_manifest_path(out, day).read_text())


@pytest.fixture(scope="module")
def protected(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protected-out")
    _score_days(world, out, ATTACK, protect=True)
    return out


def test_a_protected_baseline_keeps_flagging_the_attacker_every_day(world: World, protected: Path) -> None:
    for day in ATTACK:
        flagged, total = _attacker_flags(protected, day)
        assert total == 8 and flagged == total, (day, flagged, total)
        assert _mobile_share(world, day) == 0.0  # the phone was never learned
    record = _manifest(protected, ATTACK[-1])["inputs"]["baseline_protection"]
    assert record["enabled"] is True
    assert record["unlearned_user_days"] >= 2  # at least the victim's two alerted days before the last


def test_without_protection_the_attacker_is_learned_and_fades(world: World, protected: Path,
                                                              tmp_path: Path) -> None:
    _score_days(world, tmp_path, ATTACK, protect=False)
    assert _attacker_flags(tmp_path, ATTACK[0]) == _attacker_flags(protected, ATTACK[0])  # same first day
    assert _mobile_share(world, ATTACK[-1]) > 0.0
    for day in ATTACK[1:]:  # learned from day 22 on: the alerts fade
        assert _attacker_flags(tmp_path, day)[0] < _attacker_flags(protected, day)[0], day
    assert _manifest(tmp_path, ATTACK[-1])["inputs"]["baseline_protection"]["unlearned_user_days"] == 0


def test_rescoring_a_protected_day_gives_the_same_scores(world: World, protected: Path) -> None:
    before = io.scan_partition(protected, io.SCORES, ATTACK[-1]).collect()  # type: ignore[union-attr]
    _score_days(world, protected, [ATTACK[-1]], protect=True)
    after = io.scan_partition(protected, io.SCORES, ATTACK[-1]).collect()  # type: ignore[union-attr]
    assert after.equals(before)


def test_a_benign_verdict_lets_the_day_be_learned_and_taking_it_back_unlearns_it(world: World, tmp_path: Path) -> None:
    shutil.copytree(world.data_dir, tmp_path / "data")  # the verdict is written there
    world = World(tmp_path / "data", world.model_dir)
    out = tmp_path / "out"
    _score_days(world, out, ATTACK[:2], protect=True)
    assert _mobile_share(world, ATTACK[1]) == 0.0
    alerts = io.scan_partition(out, io.FLAGGED, ATTACK[0]).collect()  # type: ignore[union-attr]
    verdicts = tmp_path / "verdicts.csv"
    alerts.filter(pl.col("user_id") == VICTIM).select(
        "event_id", pl.lit("benign").alias("label"), pl.lit("ana").alias("analyst"),
        pl.lit("new phone").alias("note")).write_csv(verdicts)
    _cli("feedback", str(verdicts), "--data-dir", str(world.data_dir), "--output-dir", str(out))
    _score_days(world, out, [ATTACK[1]], protect=True)
    assert _mobile_share(world, ATTACK[1]) > 0.0  # day 22 is in the victim's baseline now
    # Taken back under the alerts' other id (the export's alert id): the later verdict is
    # the one in effect for the alert, so the day is left out again. It stayed learned,
    # the benign event id winning, until both ids were read as one alert.
    alerts.filter(pl.col("user_id") == VICTIM).select(
        pl.col("event_id").map_elements(lambda e: alert_id("event", e), return_dtype=pl.String),
        pl.lit("malicious").alias("label"), pl.lit("ana").alias("analyst"),
        pl.lit("not their phone after all").alias("note")).write_csv(verdicts)
    _cli("feedback", str(verdicts), "--data-dir", str(world.data_dir), "--output-dir", str(out))
    _score_days(world, out, [ATTACK[1]], protect=True)
    assert _mobile_share(world, ATTACK[1]) == 0.0


def test_alerted_days_older_than_max_days_are_learned_again(world: World, protected: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(protected, out, symlinks=True)  # published days are relative links
    last = ATTACK[-1]
    assert _mobile_share(world, last) == 0.0
    _cli("score", "--date", last.isoformat(), *world.args(out), "--in-process",
         env={"UBA_BASELINE_PROTECTION__MAX_DAYS": "1"})
    assert _mobile_share(world, last) > 0.0  # day 22, two days back, is learned; 23 is not
    record = _manifest(out, last)["inputs"]["baseline_protection"]
    assert record["max_days"] == 1 and record["unlearned_user_days"] < _manifest(
        protected, last)["inputs"]["baseline_protection"]["unlearned_user_days"]
    _cli("score", "--date", last.isoformat(), *world.args(out), "--in-process")  # the default again
    assert _mobile_share(world, last) == 0.0


def test_retraining_keeps_the_protected_snapshot_score_wrote(world: World, protected: Path, tmp_path: Path) -> None:
    """`train` takes --output-dir: retraining up to a scored day rewrites the snapshot of the
    day after it, which must stay the protected one `score` wrote (the API serves it)."""
    shutil.copytree(world.data_dir, tmp_path / "data")
    shutil.copytree(world.model_dir, tmp_path / "models")
    copy = World(tmp_path / "data", tmp_path / "models")
    last = ATTACK[-1]
    path = io.baseline_snapshot_path(copy.data_dir, last)
    written_by_score = io.read_baseline_snapshot(path)
    assert _mobile_share(copy, last) == 0.0
    _cli("train", "--end-date", ATTACK[-2].isoformat(), "--window-days", "14", *copy.args(protected))
    assert _mobile_share(copy, last) == 0.0  # the victim's alerted days are still not learned
    assert io.read_baseline_snapshot(path).equals(written_by_score)


def test_a_corrupt_flagged_part_of_an_earlier_day_is_one_line_naming_it(world: World, protected: Path,
                                                                        tmp_path: Path) -> None:
    """The protection reads the published flagged/ of the lookback: a truncated part there is
    refused in one line naming it, not a Parquet decoder traceback from the baselines stage."""
    out = tmp_path / "out"
    shutil.copytree(protected, out, symlinks=True)
    (listed,) = io.partition_files(out, io.FLAGGED, ATTACK[1])
    part = listed.resolve()
    part.unlink()  # the copy shares nothing with the module's output: a new file, cut short
    part.write_bytes((protected / io.FLAGGED / f"event_date={ATTACK[1].isoformat()}" / part.name).read_bytes()[:40])
    result = CliRunner().invoke(cli, ["score", "--date", ATTACK[-1].isoformat(), *world.args(out), "--in-process"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert str(listed) in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_leaving_out_user_days_a_day_at_a_time_leaves_the_rows_the_join_leaves(tmp_path: Path) -> None:
    """The baselines leave out a run's unlearned user-days from each day's aggregates by a
    filter on that day's users (the scan then streams into the group_by); the rows kept
    are those of the anti-join on (user_id, event_date): another day's alert of the same
    user, a day without alerts, a null user and an unlearned day outside the window
    change nothing."""
    from uba.features.protection import (
        UNLEARNED_SCHEMA,
        without_user_days,
        without_user_days_each_day,
    )

    days = [FIRST + timedelta(days=k) for k in range(4)]
    for k, day in enumerate(days):
        rows = pl.DataFrame({"user_id": ["a", "b", "c", None], "day_of_week": [day.weekday()] * 4,
                             "n_events": [k + 1, 2, 3, 4]})
        io.write_aggregates(rows, tmp_path, day, f"t{k}")
    unlearned = pl.DataFrame({"user_id": ["a", "b", "a", "c", "z"],
                              "event_date": [days[0], days[0], days[2], days[9 % 4], FIRST - timedelta(days=5)]},
                             schema=UNLEARNED_SCHEMA)
    parts = io.aggregate_part_scans(tmp_path, days)
    by_day = io.stack_aggregates(without_user_days_each_day(parts, unlearned))
    by_join = without_user_days(io.scan_aggregates(tmp_path, days), unlearned)
    assert by_day is not None and by_join is not None
    order = ["event_date", "user_id"]
    kept = by_day.collect().sort(order, nulls_last=True)
    assert kept.equals(by_join.collect().sort(order, nulls_last=True))
    assert kept.height == 16 - 4 and kept["user_id"].null_count() == 4
    assert io.stack_aggregates(without_user_days_each_day(parts, unlearned.head(0))).collect().height == 16


def test_verdicts_by_event_id_alert_id_or_user_day_id_each_let_their_day_be_learned() -> None:
    """A day's alerts are held against it unless called benign under any of their ids; the
    alert ids are hashed only when some verdict names one, and the result is the same."""
    from uba.features.protection import alerted_user_days

    day = ATTACK[0]
    flagged = pl.DataFrame({"event_id": ["e1", "e2", "e3", "e4"], "user_id": ["a", "b", "c", "c"],
                            "is_anomaly": [True] * 4, "suppressed": [False] * 4,
                            "baseline_days_active": [9] * 4})
    user_days = pl.DataFrame({"user_id": ["d", "e"], "days_active": [9, 9]})

    def unlearned(*benign: str) -> list[str]:
        return alerted_user_days(flagged, user_days, day, set(benign), 5)["user_id"].to_list()

    assert unlearned() == ["a", "b", "c", "d", "e"]
    assert unlearned("e1", "unrelated") == ["b", "c", "d", "e"]                  # an event id
    assert unlearned(alert_id("event", "e2")) == ["a", "c", "d", "e"]            # an event alert's alert id
    assert unlearned(alert_id("event", "e3")) == ["a", "b", "c", "d", "e"]       # c's other alert still counts
    assert unlearned("e3", alert_id("event", "e4")) == ["a", "b", "d", "e"]
    assert unlearned(alert_id("user_day", "d", day.isoformat())) == ["a", "b", "c", "e"]
    assert unlearned(alert_id("user_day", "d", (day + timedelta(days=1)).isoformat())) == ["a", "b", "c", "d", "e"]
