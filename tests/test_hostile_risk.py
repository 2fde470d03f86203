"""Hostile cases of entity risk (docs/risk.md) that broke it, through the real CLI and a
real uvicorn on the session's shared world: verdicts that take a benign one back, and a
risk table that does not read.

- A malicious verdict after a benign one put the alert back into the next re-score but
  marked no day stale (backfill then skipped the days that still left it out), and a
  benign verdict given by alert id kept the alert out for good after a malicious
  `alerts close`, which stores the verdict under the event id.
- A truncated or foreign risk part was a polars traceback from `score` of the next day,
  `report`, `export --what risk` and `alerts close` (after the verdict was stored), and a
  500 from PATCH /alerts and POST /feedback.
- `uba-batch feedback` or the API server SIGKILLed after storing a verdict and before
  marking its risk days left the verdict in effect and the days current for good.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from api_world import SEED_PAYLOAD, running_server
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.alerting.risk import read_risk, stale_marker
from uba.alerting.trends import TREND_KINDS
from uba.api.routes.alerts import AlertList
from uba.settings import RiskSettings

S = RiskSettings()
D1 = date(2026, 3, 9)  # the first day after training in the shared world
DAYS = [D1, D1 + timedelta(days=1), D1 + timedelta(days=2)]
KEY = "hostile-risk-key"


@dataclass(frozen=True)
class Copy:
    data_dir: Path
    model_dir: Path
    out: Path

    def args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--model-dir", str(self.model_dir), "--output-dir", str(self.out)]

    def folders(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--output-dir", str(self.out)]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        args[:3], result.output, result.exception)
    return result.exit_code, result.output


def _cli(*args: str) -> str:
    code, output = _run(*args)
    assert code == 0, (args[:3], output)
    return output


@pytest.fixture(scope="module")
def scored(shared_world, tmp_path_factory: pytest.TempPathFactory) -> Copy:
    """The shared data (private copy: feedback and triage are written there), three scored days."""
    root = tmp_path_factory.mktemp("hostile-risk")
    shutil.copytree(shared_world.data_dir, root / "data", symlinks=True)
    world = Copy(root / "data", shared_world.model_dir, root / "out")
    for day in DAYS:
        _cli("score", "--date", day.isoformat(), *world.args(), "--in-process")
    return world


@pytest.fixture
def world(scored: Copy, tmp_path: Path) -> Copy:
    """Each test's own copy of the scored world (it damages or re-scores it)."""
    shutil.copytree(scored.data_dir, tmp_path / "data", symlinks=True)
    shutil.copytree(scored.out, tmp_path / "out", symlinks=True)
    return Copy(tmp_path / "data", scored.model_dir, tmp_path / "out")


def _table(world: Copy, day: date) -> pl.DataFrame:
    table = read_risk(world.out, day)
    assert table is not None
    return table


def _contributions(table: pl.DataFrame) -> list[dict]:
    return [c for cs in table["contributions"].to_list() for c in cs]


def _stale(world: Copy, day: date) -> list:
    return stale_marker(json.loads(io.run_manifest_path(world.out, day).read_text()))


def _backfill(world: Copy) -> None:
    _cli("backfill", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat(), *world.args(), "--in-process")


def _verdict(world: Copy, tmp_path: Path, ident: str, label: str) -> str:
    csv = tmp_path / f"{label}.csv"
    csv.write_text(f"event_id,label,analyst\n{ident},{label},ann\n")
    return _cli("feedback", str(csv), *world.folders())


def test_a_malicious_close_after_a_benign_verdict_by_alert_id_counts_the_alert_again_and_marks_days_stale(
        world: Copy, tmp_path: Path) -> None:
    before = _table(world, D1)
    victim = next(c for c in _contributions(before) if c["type"] == "event")
    _verdict(world, tmp_path, victim["alert_id"], "benign")  # by alert id, as the export names it
    _backfill(world)
    assert victim["alert_id"] not in {c["alert_id"] for c in _contributions(_table(world, D1))}
    assert not any(_stale(world, d) for d in DAYS)

    printed = _cli("alerts", "close", victim["alert_id"], "--verdict", "malicious", "--date", D1.isoformat(),
                   *world.folders())
    assert f"stored as feedback for {victim['event_id']}" in printed, "a close stores an event alert's verdict by event id"
    assert f"entity risk of {D1}..{DAYS[-1]} (3 days) marked stale" in printed
    assert all("taken back" in _stale(world, d)[-1]["reason"] for d in DAYS)

    _backfill(world)
    after = _table(world, D1)
    assert victim["alert_id"] in {c["alert_id"] for c in _contributions(after)}, "the latest verdict is malicious"
    assert after.select("user_id", "risk_score").equals(before.select("user_id", "risk_score"))
    assert not any(_stale(world, d) for d in DAYS)


def test_a_malicious_verdict_taking_back_a_benign_one_on_a_user_day_alert_marks_its_day_and_later_ones(
        world: Copy, tmp_path: Path) -> None:
    day, victim = next((d, c) for d in DAYS for c in _contributions(_table(world, d)) if c["type"] == "user_day")
    _verdict(world, tmp_path, victim["alert_id"], "benign")
    _backfill(world)
    assert victim["alert_id"] not in {c["alert_id"] for c in _contributions(_table(world, day))}

    printed = _verdict(world, tmp_path, victim["alert_id"], "malicious")
    later = [d for d in DAYS if d >= day]
    assert f"entity risk of {later[0]}..{later[-1]} ({len(later)} days) marked stale" in printed
    assert all(_stale(world, d) for d in later) and not any(_stale(world, d) for d in DAYS if d < day)
    _backfill(world)
    assert victim["alert_id"] in {c["alert_id"] for c in _contributions(_table(world, day))}


def _damage(world: Copy, day: date, how: str) -> Path:
    part = io.partition_files(world.out, io.RISK, day)[0]
    data = part.read_bytes()
    part.unlink()  # a new file: the published version's own part is not the other copies' inode
    if how == "truncate":
        part.write_bytes(data[: len(data) // 2])
    else:  # a readable Parquet file that is not a risk table
        pl.DataFrame({"user": ["u1"], "x": [1.0]}).write_parquet(part)
    return part


def _left(contributions: list[dict]) -> float:
    sustained = sum(c["points"] for c in contributions if set(c["reason_kinds"]) & set(TREND_KINDS))
    own = sum(c["points"] for c in contributions) - sustained
    return ((1.0 - S.max_day_gain * (1.0 - math.exp(-own / S.scale_points)))
            * (1.0 - S.sustained_day_gain * (1.0 - math.exp(-sustained / S.scale_points))))


@pytest.mark.parametrize("how", ["truncate", "foreign"])
def test_an_unreadable_risk_table_is_one_line_naming_it_and_re_scoring_that_day_repairs_it(
        world: Copy, how: str, tmp_path: Path) -> None:
    day1_alert = next(c for c in _contributions(_table(world, D1)) if c["type"] == "event")
    part = _damage(world, DAYS[1], how)
    for args in (["score", "--date", DAYS[2].isoformat(), *world.args(), "--in-process"],
                 ["report", "--date", DAYS[2].isoformat(), *world.folders(), "--out", str(tmp_path / "r.html")],
                 ["export", "--what", "risk", "--date", DAYS[1].isoformat(), "--output-dir", str(world.out)]):
        code, output = _run(*args)
        assert code == 1 and "Traceback" not in output, (args[0], output)
        assert output.count("error: ") == 1, output
        assert str(part) in output or f"risk table of {DAYS[1]} under" in output, output
        assert f"re-score {DAYS[1]}" in output, output

    printed = _cli("alerts", "close", day1_alert["alert_id"], "--verdict", "benign", "--date", D1.isoformat(),
                   *world.folders())
    assert f"entity risk of {D1}..{DAYS[-1]} (3 days) marked stale" in printed, "the bad day is marked with the rest"

    _cli("score", "--date", DAYS[1].isoformat(), *world.args(), "--in-process")  # rewrites the bad day
    # built on D1's table, which still counts the benign alert: stale until D1 is re-scored
    # (it used to be published as current)
    assert _stale(world, DAYS[1])[-1]["reason"].startswith(f"built on the risk of {D1}, which is stale"), \
        _stale(world, DAYS[1])
    _backfill(world)  # the stale days in date order, from the verdict's day
    previous, today = _table(world, DAYS[1]), _table(world, DAYS[2])
    before = dict(zip(previous["user_id"], previous["risk_score"], strict=True))
    for row in today.iter_rows(named=True):
        carried = before.get(row["user_id"], 0.0) * 0.5 ** (1 / S.half_life_days)
        expected = carried + (100.0 - carried) * (1.0 - _left(row["contributions"]))
        assert row["risk_score"] == pytest.approx(expected, abs=1e-9), row["user_id"]
    assert not _stale(world, DAYS[1]) and not _stale(world, DAYS[2])


def test_api_verdicts_with_an_unreadable_risk_table_are_stored_and_answered_not_500(
        world: Copy, tmp_path: Path) -> None:
    alerts = [c for c in _contributions(_table(world, D1)) if c["type"] == "event"]
    user = _table(world, D1)["user_id"][0]
    _damage(world, DAYS[1], "truncate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        # started with a bad day: the readable days are served (every user read as never
        # at risk, as_of null, until the bad day was re-scored)
        served = client.get(f"/users/{user}/risk").json()
        assert served["as_of"] == DAYS[-1].isoformat(), served
        assert D1.isoformat() in {h["event_date"] for h in served["history"]}
        assert DAYS[1].isoformat() not in {h["event_date"] for h in served["history"]}
        closed = client.patch(f"/alerts/{alerts[0]['alert_id']}", json={"status": "closed", "verdict": "benign"})
        assert closed.status_code == 200, closed.text
        stored = client.post("/feedback", json={"items": [{"event_id": alerts[-1]["event_id"], "label": "benign"}]})
        assert stored.status_code == 201, stored.text
        assert client.get(f"/users/{user}/risk").status_code == 200
    assert all(_stale(world, d) for d in DAYS), "the readable days and the bad one are marked"
    assert b"Traceback" not in (tmp_path / "uvicorn.log").read_bytes()


def _stale_flags(client, user: str) -> dict[str, bool]:
    return {h["event_date"]: h["stale"] for h in client.get(f"/users/{user}/risk").json()["history"]}


def test_api_stale_flags_follow_verdicts_of_its_own_routes_and_of_the_cli_with_the_periodic_check(
        world: Copy, tmp_path: Path) -> None:
    from waiting import wait_until

    table = _table(world, D1)
    user = table["user_id"][0]
    first, second = [c for c in _contributions(table) if c["type"] == "event"][:2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               UBA_API__RELOAD_INTERVAL_SEC="0.5", RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        assert _stale_flags(client, user) and not any(_stale_flags(client, user).values())
        closed = client.patch(f"/alerts/{first['alert_id']}", json={"status": "closed", "verdict": "benign"})
        assert closed.status_code == 200, closed.text
        assert all(_stale_flags(client, user).values()), "the verdict marked its day and later ones"

        _backfill(world)  # re-scored: current again, which the periodic check sees (new versions)
        wait_until(lambda: not any(_stale_flags(client, user).values()), 20, "the re-scored days served as current")
        _verdict(world, tmp_path, second["alert_id"], "benign")  # through the CLI: only the manifests change
        wait_until(lambda: all(_stale_flags(client, user).values()), 20, "the CLI's stale marks served")


def test_evaluate_does_not_rank_users_on_stale_risk(world: Copy, tmp_path: Path) -> None:
    """The user-level metrics were computed from days whose risk was marked stale, silently."""
    table = _table(world, D1)
    pl.DataFrame({"user_id": [table["user_id"][0]], "kind": ["takeover"], "start": [D1], "end": [DAYS[-1]]}).write_parquet(
        world.data_dir / "labels" / "campaigns.parquet")
    evaluate = ["evaluate", "--start", D1.isoformat(), "--end", DAYS[-1].isoformat(), *world.args(),
                "--out", str(tmp_path / "eval")]
    assert "users by risk_score" in _cli(*evaluate), "current risk: ranked"
    _verdict(world, tmp_path, _contributions(table)[0]["alert_id"], "benign")
    printed = _cli(*evaluate)
    assert "users by risk_score" not in printed
    assert (f"user level: skipped, the entity risk of 3 of 3 days is stale (first {D1}: benign verdict" in printed
            and f"backfill --start {D1} --end {DAYS[-1]}" in printed), printed
    _backfill(world)
    assert "users by risk_score" in _cli(*evaluate), "re-scored: ranked again"


def test_the_api_starts_and_serves_risk_with_a_corrupt_run_manifest_of_a_risk_day(
        world: Copy, tmp_path: Path) -> None:
    """A risk day whose run manifest does not read (hand-edited, not a JSON object) was
    logged at startup and the API served without entity risk; with the fallback for an
    unreadable first load, the second load raised the same error out of the lifespan and
    the API did not start at all (and PATCH /alerts, which reloads risk, answered 500)."""
    user = _table(world, D1)["user_id"][0]
    alert = next(c for c in _contributions(_table(world, D1)) if c["type"] == "event")
    io.run_manifest_path(world.out, DAYS[1]).write_text("[]")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        assert client.get(f"/users/{user}/risk").status_code == 200
        closed = client.patch(f"/alerts/{alert['alert_id']}", json={"status": "closed", "verdict": "benign"})
        assert closed.status_code == 200, closed.text  # the search skips the day that does not read (was 422)
    assert b"Traceback" not in (tmp_path / "uvicorn.log").read_bytes()


# --- a day that does not read, met by the API's periodic reload and its alert search ---------


def _cut_short(path: Path, text: bytes | None = None) -> bytes:
    """Replace a published file (a new inode, as a restore or a careless copy makes) with its
    first half, or ``text``; returns what it held."""
    path = path.resolve()
    good = path.read_bytes()
    path.unlink()
    path.write_bytes(good[: len(good) // 2] if text is None else text)
    return good


def _restore(path: Path, good: bytes) -> None:
    path = path.resolve()
    path.unlink()
    path.write_bytes(good)


def _risk_part(world: Copy, day: date) -> Path:
    return io.partition_files(world.out, io.RISK, day)[0]


def _api_env(world: Copy, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


def _warnings_naming(log: Path, days: list[date]) -> list[str]:
    return [line for line in log.read_text().splitlines()
            if " WARNING " in line and any(f"event_date={d}" in line for d in days)]


# (what is damaged, when): a risk part and another day's run manifest at startup (on main:
# two loads and two warnings every interval, and no risk served at all); a risk part at
# startup (on main: two warnings for its one load, and never read again, so its repair in
# place was never served); a run manifest while a complete window is served (on main:
# one warning every interval).
RELOAD_CASES = {
    "part-and-manifest-at-start": ({DAYS[1]: "part", DAYS[2]: "manifest"}, False),
    "part-at-start": ({DAYS[1]: "part"}, False),
    "manifest-while-serving": ({DAYS[1]: "manifest"}, True),
}


@pytest.mark.parametrize("case", list(RELOAD_CASES))
def test_a_risk_day_that_does_not_read_is_logged_once_across_reload_intervals_and_its_repair_is_served(
        world: Copy, tmp_path: Path, case: str) -> None:
    from waiting import holds_throughout, wait_until

    damages, while_serving = RELOAD_CASES[case]
    user = _table(world, D1)["user_id"][0]
    risky = {d.isoformat() for d in DAYS if user in _table(world, d)["user_id"].to_list()}
    assert {d.isoformat() for d in damages} <= risky, "the user's rows of the damaged days are what is checked"
    files = {d: (_risk_part(world, d) if how == "part" else io.run_manifest_path(world.out, d))
             for d, how in damages.items()}
    saved: dict[Path, bytes] = {}

    def damage() -> None:
        for day, path in files.items():
            saved[path] = _cut_short(path, None if damages[day] == "part" else b'{"run_id": ')

    def served(client) -> set[str]:
        answer = client.get(f"/users/{user}/risk")
        assert answer.status_code == 200, answer.text
        return {h["event_date"] for h in answer.json()["history"]}

    if not while_serving:
        damage()
    log = tmp_path / "uvicorn.log"
    with running_server(_api_env(world, UBA_API__RELOAD_INTERVAL_SEC="0.25"), log,
                        uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        if while_serving:
            assert served(client) == risky
            damage()
        else:  # the readable days are served (main served none with a run manifest that did not read)
            assert served(client) == risky - {d.isoformat() for d in damages}, log.read_text()
        wait_until(lambda: _warnings_naming(log, list(damages)), 20, "the damaged day logged")
        holds_throughout(lambda: len(_warnings_naming(log, list(damages))) == 1, 3.0,
                         "one warning over 12 reload intervals of 0.25 s")
        assert all(f"event_date={d}" in _warnings_naming(log, list(damages))[0] for d in damages), "named in it"

        for path, good in saved.items():  # repaired in place (restored from a backup)
            _restore(path, good)
        wait_until(lambda: "entity risk reads again" in log.read_text(), 20, "the repair picked up")
        assert served(client) == risky
        assert len(_warnings_naming(log, list(damages))) == 1, "the repair logged no new warning"
    assert "Traceback" not in log.read_text()


def test_a_day_scored_after_a_damaged_one_is_served_while_a_complete_window_was(world: Copy, tmp_path: Path) -> None:
    """The API serves D1..DAYS[1] (DAYS[2] not published yet), then D1's run manifest stops
    reading: the complete window stays served. When DAYS[2] is published, it is served
    without D1; before, the damaged D1 held every later day back until it was repaired."""
    from waiting import wait_until

    newest = io.partition_dir(world.out, io.RISK, DAYS[2])
    parked = tmp_path / "parked-risk-day"
    newest.rename(parked)  # a link to the day's published version: moved whole, as a publish moves it
    user = next(u for u in _table(world, DAYS[1])["user_id"].to_list() if u in set(_table(world, D1)["user_id"]))
    log = tmp_path / "uvicorn.log"
    with running_server(_api_env(world, UBA_API__RELOAD_INTERVAL_SEC="0.25"), log,
                        uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:

        def served() -> set[str]:
            answer = client.get(f"/users/{user}/risk")
            assert answer.status_code == 200, answer.text
            return {h["event_date"] for h in answer.json()["history"]}

        assert served() == {D1.isoformat(), DAYS[1].isoformat()}
        _cut_short(io.run_manifest_path(world.out, D1), b'{"run_id": ')
        wait_until(lambda: _warnings_naming(log, [D1]), 20, "the damaged day logged")
        assert served() == {D1.isoformat(), DAYS[1].isoformat()}, "the complete window stays served"

        parked.rename(newest)  # DAYS[2] published
        expected = {DAYS[1].isoformat()} | ({DAYS[2].isoformat()} if user in _table(world, DAYS[2])["user_id"] else set())
        wait_until(lambda: served() == expected, 20, f"{DAYS[2]} served without {D1}")
    assert "Traceback" not in log.read_text()


# A damaged file on DAYS[1], between the alert's day D1 and the newest day, so a search
# newest first meets it before it finds the alert. On main: a run manifest that is not JSON
# answered 422 to PATCH and GET /alerts and left DAYS[2] unmarked after a benign verdict on
# D1 (the marking stopped at DAYS[1]); a truncated flagged part answered 500; a truncated
# risk part answered 422 to a search for an id on no day.
SEARCH_DAMAGES = {
    "manifest-not-json": lambda world: (io.run_manifest_path(world.out, DAYS[1]), b'{"run_id": '),
    "flagged-part-cut-short": lambda world: (io.partition_files(world.out, io.FLAGGED, DAYS[1])[0], None),
    "risk-part-cut-short": lambda world: (_risk_part(world, DAYS[1]), None),
}


@pytest.mark.parametrize("damage", list(SEARCH_DAMAGES))
def test_triage_of_a_good_alert_does_not_fail_on_another_day_that_does_not_read(
        world: Copy, tmp_path: Path, damage: str) -> None:
    first, second = [c for c in _contributions(_table(world, D1)) if c["type"] == "event"][:2]
    path, text = SEARCH_DAMAGES[damage](world)
    _cut_short(path, text)
    log = tmp_path / "uvicorn.log"
    with running_server(_api_env(world), log, uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        acked = client.patch(f"/alerts/{first['alert_id']}", json={"status": "acknowledged"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged"

        missing = client.patch("/alerts/uba-000000000000000000000000", json={"status": "acknowledged"})
        assert missing.status_code == 409, missing.text  # may be on the day that does not read: not a 404
        assert DAYS[1].isoformat() in missing.json()["detail"] and "may be on one of them" in missing.json()["detail"]

        listed = client.get("/alerts", params={"status": "all", "days": 7})
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert first["alert_id"] in {a["alert_id"] for a in body["alerts"]}
        assert [u["event_date"] for u in body["unreadable_days"]] == [DAYS[1].isoformat()]
        assert AlertList.model_validate(body).unreadable_days[0].problem  # the documented answer

        closed = client.post("/feedback", json={"items": [{"event_id": second["event_id"], "label": "benign"}]})
        assert closed.status_code == 201, closed.text
    readable = [d for d in DAYS if not (damage == "manifest-not-json" and d == DAYS[1])]
    assert all(_stale(world, d) for d in readable), "every readable day from the alert's on is marked"
    text_log = log.read_text()
    assert "Traceback" not in text_log
    skipped = [line for line in text_log.splitlines() if f"alert search: {DAYS[1]} skipped, it does not read" in line]
    assert skipped and all(f"event_date={DAYS[1]}/{path.name}" in line for line in skipped), text_log

    code, output = _run("alerts", "list", "--status", "all", *world.folders())  # the CLI shares the search
    assert code == 0 and f"1 day(s) skipped, they do not read: {DAYS[1]}" in output, output


def test_a_risk_folder_entry_named_like_a_part_that_is_not_a_file_leaves_out_its_day_only(
        world: Copy, tmp_path: Path) -> None:
    """A dangling link named like a risk part in DAYS[1]'s folder, which the listing refuses
    (CorruptPartError). The refusal came out of the API's listing of the window's files, so
    no entity risk was served at all (empty from start, never reloaded), and out of the
    alert search before its per-day guard, so GET /alerts and PATCH of a good alert on D1
    answered 422 naming the link."""
    user = next(u for u in _table(world, D1)["user_id"].to_list() if u in set(_table(world, DAYS[2])["user_id"]))
    expected = {d.isoformat() for d in (D1, DAYS[2]) if user in _table(world, d)["user_id"].to_list()}
    alert = next(c for c in _contributions(_table(world, D1)) if c["type"] == "event")
    folder = _risk_part(world, DAYS[1]).resolve().parent
    (folder / "part-99999.parquet").symlink_to(folder / "gone.parquet")
    log = tmp_path / "uvicorn.log"
    with running_server(_api_env(world), log, uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        risk = client.get(f"/users/{user}/risk")
        assert risk.status_code == 200, risk.text
        assert {h["event_date"] for h in risk.json()["history"]} == expected, log.read_text()

        listed = client.get("/alerts", params={"status": "all", "days": 7})
        assert listed.status_code == 200, listed.text
        assert [u["event_date"] for u in listed.json()["unreadable_days"]] == [DAYS[1].isoformat()]

        acked = client.patch(f"/alerts/{alert['alert_id']}", json={"status": "acknowledged"})
        assert acked.status_code == 200, acked.text
        missing = client.patch("/alerts/uba-000000000000000000000000", json={"status": "acknowledged"})
        assert missing.status_code == 409, missing.text
    assert "Traceback" not in log.read_text()


@contextmanager
def _stale_marks_lock_held(world: Copy) -> Iterator[Path]:
    """The runs' stale-marks lock, held by the test for the block (a verdict waits for it)."""
    import fcntl

    lock = world.out / io.RUNS / ".risk-stale.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield lock
    finally:
        os.close(fd)


def _stored_unmarked(world: Copy, alert: str) -> bool:
    """Whether ``alert``'s benign verdict is in effect while the risk it built is current."""
    return alert in io.benign_verdicts(world.data_dir) and not all(_stale(world, d) for d in DAYS)


def test_a_feedback_killed_before_its_marks_never_leaves_its_verdict_stored_and_the_days_current(
        world: Copy, tmp_path: Path) -> None:
    """`uba-batch feedback` stored the verdict, then marked the risk days it built stale.
    SIGKILLed in between, the verdict counted at the next re-score while every day stayed
    published as current for good: monitor named none, GET /users/{id}/risk said
    ``stale: false`` (found by an attack). The marks are now written first and the verdict
    after them, both under the stale-marks lock: killed while waiting for it, nothing is
    stored, and giving the verdict again marks the days. (The test holds the lock so the
    CLI waits exactly there, and kills it then.)"""
    import sys

    from waiting import kill_when_blocked_on_flock

    alert = next(c for c in _contributions(_table(world, D1)) if c["type"] == "event")["alert_id"]
    csv = tmp_path / "verdict.csv"
    csv.write_text(f"event_id,label\n{alert},benign\n")
    kill_when_blocked_on_flock(world.out / io.RUNS / ".risk-stale.lock",
                               [str(Path(sys.executable).with_name("uba-batch")), "feedback", str(csv), *world.folders()])
    assert not _stored_unmarked(world, alert), "the verdict is stored and its risk days are current"
    assert "marked stale" in _verdict(world, tmp_path, alert, "benign")
    assert all(_stale(world, d) for d in DAYS)


def test_post_feedback_killed_before_its_marks_never_leaves_its_verdict_stored_and_the_days_current(
        world: Copy, tmp_path: Path) -> None:
    """POST /feedback as `uba-batch feedback` above: the server SIGKILLed while the request
    waits for the stale-marks lock (a restart, the OOM killer) left the verdict stored and
    the days current. Now nothing is stored, and the request sent again marks the days."""
    import threading

    import httpx
    from waiting import blocked_on_flock, wait_until

    alert = next(c for c in _contributions(_table(world, D1)) if c["type"] == "event")["alert_id"]
    body = {"items": [{"event_id": alert, "label": "benign"}]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    answers: list[object] = []

    def post(url: str) -> None:
        try:
            answers.append(httpx.post(f"{url}/feedback", json=body, headers={"X-API-Key": KEY}, timeout=120))
        except httpx.HTTPError as exc:  # the server died under it
            answers.append(exc)

    with running_server(env, tmp_path / "first.log", uba_api=["--output-dir", str(world.out)]) as server, \
            _stale_marks_lock_held(world) as lock:
        sender = threading.Thread(target=post, args=(server.url,))
        sender.start()
        wait_until(lambda: blocked_on_flock(lock, server.process.pid), 60, "POST /feedback to wait for the lock")
        server.process.kill()
        server.process.wait()
        sender.join(timeout=60)
    assert answers and isinstance(answers[0], httpx.HTTPError), answers
    assert not _stored_unmarked(world, alert), "the verdict is stored and its risk days are current"
    with running_server(env, tmp_path / "second.log", uba_api=["--output-dir", str(world.out)]) as server, \
            server.client(headers={"X-API-Key": KEY}) as client:
        assert client.post("/feedback", json=body).status_code == 201
    assert all(_stale(world, d) for d in DAYS)


def test_verdicts_waiting_for_the_stale_marks_lock_leave_the_other_routes_served(
        world: Copy, tmp_path: Path) -> None:
    """Every POST /feedback and PATCH /alerts waits for the runs' stale-marks lock (a score
    run holds it from its check to its commit, a feedback CSV of 100,000 rows about a
    second) in a worker thread: with more verdicts waiting than the server's 40 threads,
    every route that needs one stalled until the lock was free (GET /alerts timed out,
    found by an attack holding the lock and posting 120 verdicts). Verdicts now wait in
    threads of their own (uba.api.deps.VERDICT_THREADS); the others answer meanwhile, and
    every verdict is stored once the lock is free."""
    import fcntl
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from waiting import wait_until

    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world.data_dir), UBA_MODEL_DIR=str(world.model_dir), UBA_API_KEYS=KEY,
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    lock = world.out / io.RUNS / ".risk-stale.lock"
    verdicts = 60  # more than the 40 threads Starlette runs blocking work in

    def waiting(pid: int) -> int:
        inode = lock.stat().st_ino
        rows = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
        return sum("->" in row and row[-4] == str(pid) and row[-3].endswith(f":{inode}") for row in rows)

    with running_server(env, tmp_path / "uvicorn.log", uba_api=["--output-dir", str(world.out)]) as server:
        def post(i: int) -> int:
            with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=120) as one:
                return one.post("/feedback", json={"items": [{"event_id": f"e-{i}", "label": "malicious"}]}).status_code

        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with ThreadPoolExecutor(verdicts) as pool:
                posted = [pool.submit(post, i) for i in range(verdicts)]
                wait_until(lambda: waiting(server.process.pid) > 0, 60, "verdicts to wait for the lock")
                with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=15) as client:
                    listed = client.get("/alerts", params={"days": 1, "status": "all"})
                    assert listed.status_code == 200, listed.text
                    scored = client.post("/predict/batch", json={"events": [SEED_PAYLOAD] * 2})
                    assert scored.status_code == 200, scored.text
                os.close(fd)
                fd = -1
                assert [f.result(timeout=300) for f in posted] == [201] * verdicts
        finally:
            if fd >= 0:
                os.close(fd)
    stored = pl.read_parquet(io.table_part_files(world.data_dir, io.FEEDBACK))
    assert set(stored["event_id"]) >= {f"e-{i}" for i in range(verdicts)}
