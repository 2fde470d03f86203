"""Entity risk through the real CLI and a real uvicorn: ``score`` over three consecutive
days of the session's shared world, checked by exact values (decay, a benign verdict,
re-scoring staleness), then ``GET /users/{id}/risk`` before and after a reload."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from api_world import running_server
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.alerting.risk import read_risk, stale_marker
from uba.alerting.trends import TREND_KINDS
from uba.settings import RiskSettings

S = RiskSettings()
D1 = date(2026, 3, 9)  # the first day after training; 2026-03-08 of this world has no alert
DAYS = [D1, D1 + timedelta(days=1), D1 + timedelta(days=2)]
KEY = "risk-test-key"
A1, A2 = DAYS[1], DAYS[2]  # the API test's days (the verdict above emptied the first day's risk)


@dataclass(frozen=True)
class RiskWorld:
    data_dir: Path
    model_dir: Path
    out: Path

    def args(self, out: Path | None = None) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--model-dir", str(self.model_dir),
                "--output-dir", str(out or self.out)]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args[:3], result.output, result.exception)
    return result.output


def _score(world: RiskWorld, day: date, out: Path | None = None) -> None:
    _cli("score", "--date", day.isoformat(), *world.args(out), "--in-process")


@pytest.fixture(scope="module")
def world(shared_world, tmp_path_factory: pytest.TempPathFactory) -> RiskWorld:
    """A private copy of the data (feedback is written there), the shared model, three scored days."""
    root = tmp_path_factory.mktemp("risk")
    shutil.copytree(shared_world.data_dir, root / "data")
    world = RiskWorld(root / "data", shared_world.model_dir, root / "out")
    for day in DAYS:
        _score(world, day)
    return world


def _tables(out: Path) -> list[pl.DataFrame]:
    tables = [read_risk(out, d) for d in DAYS]
    assert all(t is not None for t in tables)
    return tables  # type: ignore[return-value]


def _manifest(out: Path, day: date) -> dict:
    return json.loads(io.run_manifest_path(out, day).read_text())


def _left(contributions: list[dict]) -> float:
    """The share of the gap to 100 that today's listed points leave open: one day's own
    points close at most max_day_gain of it, multi-day signals sustained_day_gain."""
    sustained = sum(c["points"] for c in contributions if set(c["reason_kinds"]) & set(TREND_KINDS))
    own = sum(c["points"] for c in contributions) - sustained
    return ((1.0 - S.max_day_gain * (1.0 - math.exp(-own / S.scale_points)))
            * (1.0 - S.sustained_day_gain * (1.0 - math.exp(-sustained / S.scale_points))))


def _expected(previous: pl.DataFrame, today: pl.DataFrame, gap_days: int) -> dict[str, float]:
    """Each user's score from the published previous score, the half-life and today's listed points."""
    before = dict(zip(previous["user_id"], previous["risk_score"], strict=True))
    out = {}
    for row in today.iter_rows(named=True):
        carried = before.get(row["user_id"], 0.0) * 0.5 ** (gap_days / S.half_life_days)
        out[row["user_id"]] = carried + (100.0 - carried) * (1.0 - _left(row["contributions"]))
    return out


def test_risk_decays_from_day_to_day_by_exact_values(world: RiskWorld) -> None:
    tables = _tables(world.out)
    assert tables[0].height > 0, "the first day has alerts"
    carried_only = 0
    for previous, today in zip(tables, tables[1:], strict=False):
        expected = _expected(previous, today, 1)
        for row in today.iter_rows(named=True):
            assert row["risk_score"] == pytest.approx(expected[row["user_id"]], rel=0, abs=1e-9), row["user_id"]
            if not row["contributions"]:
                carried_only += 1
                before = previous.filter(pl.col("user_id") == row["user_id"])["risk_score"].item()
                assert row["risk_score"] == pytest.approx(before * 0.5 ** (1 / S.half_life_days), abs=1e-12)
                assert row["risk_delta"] == pytest.approx(row["risk_score"] - before, abs=1e-12)
        gone = set(previous["user_id"]) - set(today["user_id"])
        for user in gone:  # decayed below the floor with nothing new
            score = previous.filter(pl.col("user_id") == user)["risk_score"].item()
            assert score * 0.5 ** (1 / S.half_life_days) < S.min_score
    assert carried_only > 0, "some user carried risk without a new alert"
    manifest = _manifest(world.out, DAYS[1])
    assert manifest["risk"]["previous"] == {"date": D1.isoformat(), "run_id": _manifest(world.out, D1)["run_id"]}
    assert not any(stale_marker(_manifest(world.out, d)) for d in DAYS)


def test_a_benign_verdict_and_re_scoring_make_later_days_stale_until_re_scored(
        world: RiskWorld, tmp_path: Path) -> None:
    day1 = _tables(world.out)[0]
    top = day1.row(0, named=True)
    victim = top["contributions"][0]
    csv = tmp_path / "verdicts.csv"
    csv.write_text(f"event_id,label,analyst\n{victim['alert_id']},benign,ann\n")
    printed = _cli("feedback", str(csv), "--data-dir", str(world.data_dir), "--output-dir", str(world.out))
    assert f"entity risk of {D1}..{DAYS[-1]} (3 days) marked stale" in printed
    assert all(stale_marker(_manifest(world.out, d)) for d in DAYS), "the verdict's day and later ones"

    _score(world, D1)  # re-scoring the verdict's day: clears it, marks the later days again
    assert stale_marker(_manifest(world.out, D1)) == []
    rescored = read_risk(world.out, D1)
    assert rescored is not None
    assert victim["alert_id"] not in {c["alert_id"] for cs in rescored["contributions"] for c in cs}
    mine = rescored.filter(pl.col("user_id") == top["user_id"])
    if mine.height:  # the user's score is what their remaining contributions give (no earlier day)
        expected = 100 * (1 - _left(mine["contributions"].item()))
        assert mine["risk_score"].item() == pytest.approx(expected, abs=1e-9)
        assert mine["risk_score"].item() < top["risk_score"]
    for day in DAYS[1:]:
        entries = stale_marker(_manifest(world.out, day))
        assert entries[-1]["changed_day"] == D1.isoformat() and "re-scored" in entries[-1]["reason"], entries

    monitor = _cli("monitor", "--start", D1.isoformat(), "--end", DAYS[-1].isoformat(), "--output-dir",
                   str(world.out), "--png", str(tmp_path / "m.png"))
    assert f"entity risk stale on {DAYS[1]}" in monitor and f"entity risk stale on {D1}" not in monitor

    _cli("backfill", "--start", D1.isoformat(), "--end", DAYS[-1].isoformat(), *world.args(), "--in-process")
    assert all(stale_marker(_manifest(world.out, d)) == [] for d in DAYS), "backfill re-scored the stale days"
    assert _manifest(world.out, D1)["run_id"] == _manifest(world.out, DAYS[1])["risk"]["previous"]["run_id"]
    tables = _tables(world.out)
    expected = _expected(tables[0], tables[1], 1)
    assert all(r["risk_score"] == pytest.approx(expected[r["user_id"]], abs=1e-9)
               for r in tables[1].iter_rows(named=True))


def test_re_scoring_with_an_unchanged_risk_marks_nothing_and_a_gap_decays_over_calendar_days(
        world: RiskWorld, tmp_path: Path) -> None:
    _score(world, DAYS[1])  # same inputs: the same risk, so day 3 stays current
    assert stale_marker(_manifest(world.out, DAYS[2])) == []
    gap_out = tmp_path / "gap"
    _score(world, D1, gap_out)
    _score(world, DAYS[2], gap_out)  # no run on the day between: two calendar days of decay
    first, third = read_risk(gap_out, D1), read_risk(gap_out, DAYS[2])
    assert first is not None and third is not None
    expected = _expected(first, third, 2)
    assert all(r["risk_score"] == pytest.approx(expected[r["user_id"]], abs=1e-9) for r in third.iter_rows(named=True))


@pytest.fixture
def api_out(world: RiskWorld, tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "api-out"
    _score(world, DAYS[1], out)
    yield out


def test_api_serves_a_users_risk_and_a_reload_picks_up_a_new_day(world: RiskWorld, api_out: Path,
                                                                  tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    day1 = read_risk(api_out, A1)
    assert day1 is not None and day1.height
    user = day1["user_id"][0]
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(api_out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        assert httpx.get(f"{server.url}/users/{user}/risk").status_code == 401, "behind the key like /model"
        body = client.get(f"/users/{user}/risk").json()
        assert body["as_of"] == A1.isoformat() and body["days"] == S.history_days
        assert [h["event_date"] for h in body["history"]] == [A1.isoformat()]
        assert body["history"][0]["risk_score"] == pytest.approx(day1["risk_score"][0], abs=1e-12)
        assert body["history"][0]["contributions"][0]["alert_id"] == day1["contributions"][0][0]["alert_id"]
        unknown = client.get("/users/nobody-at-all/risk")
        assert unknown.status_code == 200 and unknown.json()["history"] == []

        _score(world, A2, api_out)
        assert client.get(f"/users/{user}/risk").json()["as_of"] == A1.isoformat(), "served from the loaded index"
        assert client.post("/admin/reload").status_code == 200
        after = client.get(f"/users/{user}/risk").json()
        assert after["as_of"] == A2.isoformat()
        assert [h["event_date"] for h in after["history"]][0] == A1.isoformat()
        day2 = read_risk(api_out, A2)
        assert day2 is not None
        listed = {h["event_date"]: h["risk_score"] for h in after["history"]}
        mine = day2.filter(pl.col("user_id") == user)
        assert (A2.isoformat() in listed) == bool(mine.height)


def test_a_day_scored_for_the_first_time_after_later_days_marks_them_and_says_so(world: RiskWorld,
                                                                                  tmp_path: Path) -> None:
    """Later days never carried its risk: stale, but the day was not "re-scored"."""
    out = tmp_path / "out"
    _score(world, DAYS[1], out)
    _score(world, D1, out)
    (entry,) = stale_marker(_manifest(out, DAYS[1]))
    assert entry["changed_day"] == D1.isoformat(), entry
    assert entry["reason"].startswith(f"{D1} scored for the first time after them (run "), entry


def _principal(user: str) -> str:
    """Kerberos-style principals, legal user ids in events: half end in '/risk' as well,
    the route's own last segment."""
    return f"{user}/admin@EXAMPLE.COM" if int(user[-1]) % 2 else f"ops/{user}/risk"


@pytest.fixture(scope="module")
def principal_world(shared_world, tmp_path_factory: pytest.TempPathFactory) -> RiskWorld:
    """The shared world's events with every user renamed to a principal holding '/', ingested
    (`uba-batch ingest`) into a fresh data directory and scored with the shared model."""
    root = tmp_path_factory.mktemp("principals")
    events = pl.read_parquet(shared_world.built / "data" / "events", hive_partitioning=True).drop("event_date")
    renamed = root / "principals.parquet"
    events.with_columns(pl.col("user_id").map_elements(_principal, return_dtype=pl.String)).write_parquet(renamed)
    _cli("ingest", str(renamed), "--data-dir", str(root / "data"))
    world = RiskWorld(root / "data", shared_world.model_dir, root / "out")
    _score(world, D1)
    return world


def test_api_serves_the_risk_of_user_ids_holding_a_slash_encoded_or_not(principal_world: RiskWorld,
                                                                          tmp_path: Path) -> None:
    """A user id with '/' (``alice/admin@EXAMPLE.COM``) matched no route: 404 even as %2F.
    The id is everything up to the last ``/risk``, also for an id that ends in ``/risk``."""
    import os
    from urllib.parse import quote

    table = read_risk(principal_world.out, D1)
    assert table is not None
    scores = dict(zip(table["user_id"], table["risk_score"], strict=True))
    admin = next(u for u in scores if u.endswith("@EXAMPLE.COM"))
    ops = next(u for u in scores if u.endswith("/risk"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(principal_world.data_dir), UBA_MODEL_DIR=str(principal_world.model_dir),
               UBA_API_KEYS=KEY, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(principal_world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        for user in (admin, ops):
            for path in (f"/users/{quote(user, safe='')}/risk", f"/users/{user}/risk"):
                answer = client.get(path)
                assert answer.status_code == 200, (path, answer.text)
                body = answer.json()
                assert body["user_id"] == user, path
                assert [h["risk_score"] for h in body["history"]] == [pytest.approx(scores[user], abs=1e-12)]
        plain = client.get("/users/x/risk")
        assert plain.status_code == 200 and plain.json()["user_id"] == "x" and plain.json()["history"] == []
        assert client.get(f"/users/{ops.removesuffix('/risk')}/risk").json()["history"] == [], "not the /risk id"
        assert client.get("/users//risk").status_code == 422, "an empty id is named, not a missing route"
        assert client.get(f"/users/{quote(admin, safe='')}/risk/more").status_code == 404
        tab = client.get("/users/a%09b/risk")  # no stored id holds a control character: named
        assert tab.status_code == 422 and tab.json()["detail"][0]["field"] == "user_id", tab.text
        assert client.get("/users/a%0Ab/risk").status_code == 404  # the router stops at a line break
        schema = client.get("/openapi.json").json()
        operation = schema["paths"]["/users/{user_id}/risk"]["get"]
        (param,) = operation["parameters"]
        assert "%2F" in param["description"], "the schema says how to encode an id"
        declared = re.compile(param["schema"]["pattern"])  # what a client generator will send
        assert declared.search(admin) and not declared.search("a\nb") and not declared.search("a\tb")
        assert {"404", "422"} <= set(operation["responses"])
        metrics = client.get("/metrics").text
        assert 'route="/users/{user_id}/risk"' in metrics and "user_id:path" not in metrics


def test_re_scoring_a_day_alone_while_the_day_before_is_stale_leaves_it_stale(world: RiskWorld,
                                                                               tmp_path: Path) -> None:
    """A benign verdict on the middle day marks it and the last day stale; re-scoring only
    the last day published it as current (no marker: `monitor` stopped naming it), though
    it carried the middle day's stale scores (found by an attack). It is now born stale,
    naming the day a backfill must start from; the backfill clears both."""
    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")
    shutil.copytree(world.data_dir, own.data_dir)  # the verdict below stays out of the module's world
    for day in DAYS:
        _score(own, day)
    middle = read_risk(own.out, DAYS[1])
    assert middle is not None and middle.height
    victim = next(c for cs in middle["contributions"] for c in cs)
    csv = tmp_path / "verdicts.csv"
    csv.write_text(f"event_id,label\n{victim['alert_id']},benign\n")
    _cli("feedback", str(csv), "--data-dir", str(own.data_dir), "--output-dir", str(own.out))
    assert stale_marker(_manifest(own.out, DAYS[1])) and stale_marker(_manifest(own.out, DAYS[2]))

    _score(own, DAYS[2])  # the last day alone, on the middle day's stale table
    lone = read_risk(own.out, DAYS[2])
    (entry,) = stale_marker(_manifest(own.out, DAYS[2]))
    assert entry["changed_day"] == DAYS[1].isoformat(), entry
    assert entry["reason"].startswith(f"built on the risk of {DAYS[1]}, which is stale (benign verdict on "), entry
    monitor = _cli("monitor", "--start", D1.isoformat(), "--end", DAYS[-1].isoformat(), "--output-dir",
                   str(own.out), "--png", str(tmp_path / "m.png"))
    assert f"entity risk stale on {DAYS[2]}" in monitor
    assert f"uba-batch backfill --start {DAYS[1]} --end {DAYS[2]}" in monitor

    _cli("backfill", "--start", DAYS[1].isoformat(), "--end", DAYS[2].isoformat(), *own.args(), "--in-process")
    assert stale_marker(_manifest(own.out, DAYS[1])) == [] and stale_marker(_manifest(own.out, DAYS[2])) == []
    fresh = read_risk(own.out, DAYS[2])
    assert lone is not None and fresh is not None
    assert not lone.select("user_id", "risk_score").equals(fresh.select("user_id", "risk_score")), \
        "the lone re-score was indeed stale"


def test_verdicts_stored_at_once_each_leave_their_stale_mark(world: RiskWorld, tmp_path: Path) -> None:
    """Eight `uba-batch feedback` processes at once, each a benign verdict on another alert of
    the last day: each marking read the manifest, added its entry and wrote it back over the
    others', so some verdicts left no trace in `risk_stale` (6 of 8 in the attack; the same
    unlocked write let a marking land in a version a re-score was replacing). Markings now
    take turns under the runs' stale-marks lock, which a run also holds from its check to its commit."""
    import subprocess
    import sys

    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")
    shutil.copytree(world.data_dir, own.data_dir)
    shutil.copytree(world.out, own.out, symlinks=True)  # published days are relative links
    ids = sorted({c["alert_id"] for table in _tables(own.out) for cs in table["contributions"] for c in cs})[:8]
    assert len(ids) == 8  # a verdict on any day's alert marks the last day too
    jobs = []
    for i, alert in enumerate(ids):
        csv = tmp_path / f"v{i}.csv"
        csv.write_text(f"event_id,label\n{alert},benign\n")
        jobs.append(subprocess.Popen([str(Path(sys.executable).with_name("uba-batch")), "feedback", str(csv),
                                      "--data-dir", str(own.data_dir), "--output-dir", str(own.out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [job.communicate(timeout=180)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    reasons = " ".join(entry["reason"] for entry in stale_marker(_manifest(own.out, DAYS[2])))
    assert [alert for alert in ids if alert not in reasons] == [], "every verdict left its mark"


def test_a_day_published_while_a_verdict_waits_to_mark_is_stale(world: RiskWorld, tmp_path: Path) -> None:
    """A benign verdict listed the risk days to mark (D1, D2) before taking the runs'
    stale-marks lock; the first run of D3, committed in between, saw D2 unmarked in its
    check and was published as current, and the verdict then marked only the days it had
    listed: D3 carried the verdict's alert in D2's scores for good, never named stale
    (found by an attack). The days are now listed under the lock. (The test holds the lock
    until the verdict waits for it, stops the verdict there, lets D3 commit, then resumes it.)"""
    import fcntl
    import os
    import signal
    import subprocess
    import sys

    from waiting import blocked_on_flock, stopped, wait_until

    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")
    shutil.copytree(world.data_dir, own.data_dir)
    _score(own, DAYS[0])
    _score(own, DAYS[1])
    first = read_risk(own.out, DAYS[0])
    assert first is not None and first.height
    victim = next(c for cs in first["contributions"] for c in cs)
    csv = tmp_path / "verdict.csv"
    csv.write_text(f"event_id,label\n{victim['alert_id']},benign\n")
    lock = own.out / io.RUNS / ".risk-stale.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    verdict = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        verdict = subprocess.Popen([str(Path(sys.executable).with_name("uba-batch")), "feedback", str(csv),
                                    "--data-dir", str(own.data_dir), "--output-dir", str(own.out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: blocked_on_flock(lock, verdict.pid), 120, "the verdict to wait for the stale-marks lock")
        verdict.send_signal(signal.SIGSTOP)  # out of the wait, retries it only once resumed
        wait_until(lambda: stopped(verdict.pid), 60, "the verdict to stop")  # released before: it took it
        os.close(fd)
        fd = -1
        _score(own, DAYS[2])  # its first run, on D2's risk, which still counts the alert
    finally:
        if fd >= 0:
            os.close(fd)
        if verdict is not None:
            verdict.send_signal(signal.SIGCONT)
    assert verdict is not None
    output = verdict.communicate(timeout=180)[0]
    assert verdict.returncode == 0, output
    assert stale_marker(_manifest(own.out, DAYS[1])), "the verdict's later day is marked"
    marks = stale_marker(_manifest(own.out, DAYS[2]))
    assert marks and marks[0]["changed_day"] == DAYS[0].isoformat(), marks


def test_a_run_killed_after_its_commit_has_marked_the_later_days(world: RiskWorld, tmp_path: Path) -> None:
    """The middle day scored for the first time after the last one: its run committed, then
    marked the last day stale. SIGKILLed in between, the last day carried a risk without
    the middle day's alerts as current for good: re-running the middle day found its risk
    unchanged and marked nothing (found by an attack). The marks now come before the commit
    point, under the runs' stale-marks lock the run already holds."""
    import os
    import signal
    import subprocess
    import sys

    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")
    shutil.copytree(world.data_dir, own.data_dir)
    _score(own, DAYS[0])
    _score(own, DAYS[2])
    env = {**os.environ, "UBA_FAULT_KILL_AT_PUBLISH_STEP": "prune"}  # right after the commit and its clean-up
    killed = subprocess.run([str(Path(sys.executable).with_name("uba-batch")), "score", "--date",
                             DAYS[1].isoformat(), *own.args(), "--in-process"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _manifest(own.out, DAYS[1])["risk"]["previous"]["date"] == DAYS[0].isoformat(), "published"
    _score(own, DAYS[1])  # its risk is the same now: a re-run marks nothing more
    (entry,) = stale_marker(_manifest(own.out, DAYS[2]))
    assert entry["changed_day"] == DAYS[1].isoformat(), entry
    assert entry["reason"].startswith(f"{DAYS[1]} scored for the first time after them (run "), entry


def test_a_verdict_given_while_a_days_first_run_commits_marks_that_day(world: RiskWorld, tmp_path: Path) -> None:
    """A benign verdict on an event of D, given while D's first run held the stale-marks lock
    between its check of the verdicts (which did not see it) and its commit: the verdict
    was stored, then searched for the risk days its alert built before taking the lock,
    found none (D was not published yet) and marked nothing; D was then published as
    current with the alert counted (found by an attack; docs/risk.md called it a known
    limit). The verdict now searches and marks under the lock, before it is stored: it
    waits for the commit and marks D. (The run stops itself after its check with the
    test hook UBA_FAULT_STOP_AT_PUBLISH_STEP=manifest, the test gives the verdict, then
    resumes the run.)"""
    import os
    import signal
    import subprocess
    import sys

    from waiting import blocked_on_flock, stopped, wait_until

    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")
    shutil.copytree(world.data_dir, own.data_dir)
    batch = str(Path(sys.executable).with_name("uba-batch"))
    run = subprocess.Popen([batch, "score", "--date", DAYS[1].isoformat(), *own.args(), "--in-process"],
                           env={**os.environ, "UBA_FAULT_STOP_AT_PUBLISH_STEP": "manifest"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    verdict = None
    try:
        wait_until(lambda: run.poll() is not None or stopped(run.pid), 300, "the run to stop after its check")
        assert run.poll() is None, run.communicate()[0][-2000:]
        (staged,) = own.out.glob(f".staging/event_date={DAYS[1]}/*/risk/*.parquet")  # what it will publish
        event = next(c for cs in pl.read_parquet(staged)["contributions"] for c in cs if c["event_id"])["event_id"]
        csv = tmp_path / "verdict.csv"
        csv.write_text(f"event_id,label\n{event},benign\n")
        verdict = subprocess.Popen([batch, "feedback", str(csv), "--data-dir", str(own.data_dir),
                                    "--output-dir", str(own.out)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        lock = own.out / io.RUNS / ".risk-stale.lock"
        wait_until(lambda: verdict.poll() is not None or blocked_on_flock(lock, verdict.pid), 120,
                   "the verdict to be stored or to wait for the run's lock")
    finally:
        run.send_signal(signal.SIGCONT)
    assert run.wait(timeout=300) == 0, run.communicate()[0][-2000:]
    output = verdict.communicate(timeout=120)[0]
    assert verdict.returncode == 0, output
    marks = stale_marker(_manifest(own.out, DAYS[1]))
    assert marks and event in marks[0]["reason"], (marks, output)
    assert any(c["event_id"] == event for cs in read_risk(own.out, DAYS[1])["contributions"] for c in cs)


def test_a_verdict_given_before_any_run_and_stored_after_the_first_marks_its_day(
        world: RiskWorld, tmp_path: Path) -> None:
    """A benign verdict on an event of D given where the output directory did not exist yet
    (feedback before any run), stored only after D's first run had made the directory, read
    the verdicts and committed: the verdict found no directory, so it locked nothing and
    looked for no day, and D was published current with the benign alert counted, marked
    nowhere (found by an attack; the commit that closed the same window for a published
    output directory assumed "no directory, no run in flight"). It now looks again after
    the store and, the directory being there, marks D under the lock. (The feedback stops
    itself just before its store with the test hook UBA_FAULT_STOP_AT=feedback; the test
    runs D's first run, then resumes it.)"""
    import os
    import signal
    import subprocess
    import sys

    from waiting import stopped, wait_until

    own = RiskWorld(tmp_path / "data", world.model_dir, tmp_path / "out")  # no output directory yet
    shutil.copytree(world.data_dir, own.data_dir)
    benign = io.benign_verdicts(own.data_dir)
    event = next(c["event_id"] for cs in read_risk(world.out, DAYS[1])["contributions"] for c in cs
                 if c["event_id"] and c["event_id"] not in benign and c["alert_id"] not in benign)
    csv = tmp_path / "verdict.csv"
    csv.write_text(f"event_id,label\n{event},benign\n")
    stored = io.table_part_files(own.data_dir, io.FEEDBACK)
    verdict = subprocess.Popen([str(Path(sys.executable).with_name("uba-batch")), "feedback", str(csv),
                                "--data-dir", str(own.data_dir), "--output-dir", str(own.out)],
                               env={**os.environ, "UBA_FAULT_STOP_AT": "feedback"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: verdict.poll() is not None or stopped(verdict.pid), 120, "the verdict to stop")
        assert verdict.poll() is None, verdict.communicate()[0][-2000:]
        assert not own.out.exists() and io.table_part_files(own.data_dir, io.FEEDBACK) == stored
        _score(own, DAYS[1])  # D's first run: makes the directory, reads the verdicts without this one
    finally:
        verdict.send_signal(signal.SIGCONT)
    output = verdict.communicate(timeout=120)[0]
    assert verdict.returncode == 0, output
    assert event in io.benign_verdicts(own.data_dir)
    assert any(c["event_id"] == event for cs in read_risk(own.out, DAYS[1])["contributions"] for c in cs)
    marks = stale_marker(_manifest(own.out, DAYS[1]))
    assert marks and event in marks[0]["reason"], (marks, output)


def test_risk_settings_changed_between_days_are_named_where_the_scales_meet(world: RiskWorld, tmp_path: Path) -> None:
    """A ConfigMap edit of the risk settings between two nightly runs: the next day carried
    scores computed on the old scale into its own, and nothing said so (the manifest
    recorded only the half-life and the cuts, and nothing compared them; found by an
    attack). Now the manifest records every setting of the formula, and the first day on
    new settings names what changed since the day it carried, in its manifest and in one
    warning; the day after, on the same settings, is quiet."""
    out = tmp_path / "changed"
    _score(world, DAYS[0], out)
    assert _manifest(out, DAYS[0])["risk"]["settings"] == {
        k: v for k, v in S.model_dump(mode="json").items() if k != "history_days"}
    assert "settings_changed" not in _manifest(out, DAYS[0])["risk"]
    new = {"UBA_RISK__EVENT_POINTS": "20", "UBA_RISK__HIGH_CUT": "60"}
    changed = CliRunner().invoke(cli, ["score", "--date", DAYS[1].isoformat(), *world.args(out), "--in-process"],
                                 env=new)
    assert changed.exit_code == 0, changed.output
    assert (f"entity risk of {DAYS[1]} carries the scores of {DAYS[0]}, computed with other risk settings "
            "(event_points 10.0 -> 20.0, high_cut 70.0 -> 60.0): until the days from the first one you want on "
            "the new settings are re-scored in date order (uba-batch backfill --force --start ...), today's "
            "scores mix the two") in changed.output
    risk = _manifest(out, DAYS[1])["risk"]
    assert risk["settings_changed"] == {"since": DAYS[0].isoformat(),
                                        "changes": {"event_points": [10.0, 20.0], "high_cut": [70.0, 60.0]}}
    assert risk["settings"]["event_points"] == 20.0 and risk["cuts"]["high"] == 60.0
    same = CliRunner().invoke(cli, ["score", "--date", DAYS[2].isoformat(), *world.args(out), "--in-process"],
                              env=new)
    assert same.exit_code == 0, same.output
    assert "other risk settings" not in same.output
    assert "settings_changed" not in _manifest(out, DAYS[2])["risk"]
