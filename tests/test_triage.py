"""Triage through the real CLI on a scored world: statuses, verdicts into feedback,
suppress-similar through the suppression machinery, and refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import polars as pl
import pytest
from click.testing import CliRunner
from worlds import SCORE_DATES

from jobs.cli import cli
from uba import io
from uba.alerting.feedback import confirmed_malicious_ids, load_rules
from uba.alerting.triage import TRIAGE, triage_log
from uba.io import latest_feedback

DAYS = list(SCORE_DATES[:2])  # the session's alert world, scored by this module


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def _ok(*args: str) -> str:
    code, out, err = _run(*args)
    assert code == 0, (args[:2], out, err)
    return out


@pytest.fixture(scope="module")
def world(alert_world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's alert world (80 users, user-day anomalies, a model that flags plenty),
    copied (the triage table and feedback live in its data directory) and its first two
    alert days scored."""
    import shutil

    root = tmp_path_factory.mktemp("triage")
    shutil.copytree(alert_world.data_dir, root / "data", symlinks=True)
    shutil.copytree(alert_world.model_dir, root / "models", symlinks=True)
    data, models, out = str(root / "data"), str(root / "models"), str(root / "out")
    _ok("backfill", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat(), "--data-dir", data,
        "--model-dir", models, "--output-dir", out, "--in-process")
    return root


def _dirs(world: Path) -> list[str]:
    return ["--data-dir", str(world / "data"), "--output-dir", str(world / "out")]


def _listed(world: Path, *extra: str) -> list[dict[str, object]]:
    out = _ok("alerts", "list", "--format", "jsonl", "--limit", "0", *_dirs(world), *extra)
    return [json.loads(line) for line in out.splitlines() if line]


@pytest.fixture
def own(world: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(world, tmp_path / "w", symlinks=True)  # published days are relative links
    return tmp_path / "w"


def test_ack_and_close_move_an_alert_through_its_statuses(own: Path) -> None:
    open_alerts = _listed(own, "--days", "2")
    assert len(open_alerts) > 5 and {a["status"] for a in open_alerts} == {"open"}
    assert {"event", "user_day"} <= {a["alert_type"] for a in open_alerts}
    first = open_alerts[0]["alert_id"]
    assert f"{first}: acknowledged" in _ok("alerts", "ack", first, "--analyst", "ann", "--note", "looking",
                                           *_dirs(own))
    assert first not in {a["alert_id"] for a in _listed(own, "--days", "2")}
    (acked,) = _listed(own, "--days", "2", "--status", "acknowledged")
    assert acked["alert_id"] == first and acked["analyst"] == "ann" and acked["note"] == "looking"
    _ok("alerts", "close", first, "--verdict", "malicious", *_dirs(own))
    shown = json.loads(_ok("alerts", "show", first, *_dirs(own)))
    assert shown["status"] == "closed" and [h["action"] for h in shown["history"]] == ["ack", "close"]
    assert shown["history"][-1]["verdict"] == "malicious"
    _ok("alerts", "reopen", first, "--note", "seen again", *_dirs(own))
    assert first in {a["alert_id"] for a in _listed(own, "--days", "2")}
    counts = {s: len(_listed(own, "--days", "2", "--status", s)) for s in ("open", "acknowledged", "closed")}
    assert counts == {"open": len(open_alerts), "acknowledged": 0, "closed": 0}


def test_verdicts_reach_the_feedback_store_under_the_event_or_alert_id(own: Path) -> None:
    alerts = _listed(own, "--days", "2")
    event = next(a for a in alerts if a["alert_type"] == "event")
    user_day = next(a for a in alerts if a["alert_type"] == "user_day")
    _ok("alerts", "close", event["alert_id"], "--verdict", "malicious", "--note", "exfil", *_dirs(own))
    _ok("alerts", "close", user_day["alert_id"], "--verdict", "benign", *_dirs(own))
    labels = dict(latest_feedback(own / "data").select("event_id", "label").collect().iter_rows())
    assert labels == {event["event_id"]: "malicious", user_day["alert_id"]: "benign"}
    assert confirmed_malicious_ids(own / "data") == {event["event_id"]}


def test_a_benign_close_makes_the_risk_it_built_stale_as_feedback_does(own: Path) -> None:
    """A benign verdict given by closing an alert (CLI or PATCH /alerts) is a late verdict like
    `uba-batch feedback`: the days whose risk the alert built, and every later one, are
    marked stale (before, the verdict was stored but no day was marked, so monitor and
    backfill never re-scored them). A malicious close changes no risk and marks nothing."""
    from uba.alerting.risk import read_risk, stale_marker

    table = read_risk(own / "out", DAYS[0])
    assert table is not None and table.height
    contributions = [c for cs in table["contributions"] for c in cs]
    user_day = next(c for c in contributions if c["type"] == "user_day")
    event = next(c for c in contributions if c["type"] == "event")

    def marks() -> list[int]:
        return [len(stale_marker(json.loads(io.run_manifest_path(own / "out", d).read_text()))) for d in DAYS]

    _ok("alerts", "close", event["alert_id"], "--verdict", "malicious", *_dirs(own))
    assert marks() == [0, 0]
    printed = _ok("alerts", "close", user_day["alert_id"], "--verdict", "benign", *_dirs(own))
    assert marks() == [1, 1]
    assert f"entity risk of {DAYS[0]}..{DAYS[-1]} (2 days) marked stale" in printed
    entry = stale_marker(json.loads(io.run_manifest_path(own / "out", DAYS[1]).read_text()))[0]
    assert entry["changed_day"] == DAYS[0].isoformat() and user_day["alert_id"] in entry["reason"]


def test_close_benign_with_suppress_similar_creates_a_rule_that_the_next_score_applies(own: Path) -> None:
    day = DAYS[1]
    event = next(a for a in _listed(own, "--date", day.isoformat(), "--type", "event"))
    out = _ok("alerts", "close", event["alert_id"], "--verdict", "benign", "--suppress-similar", *_dirs(own))
    assert "suppression rule" in out
    rules = load_rules(own / "data")
    assert rules.height == 1 and rules.row(0, named=True)["user_id"] == event["user_id"]
    assert rules.row(0, named=True)["reason_kind"] == event["reason_kinds"][0]
    _ok("score", "--date", day.isoformat(), "--in-process", *_dirs(own),
        "--model-dir", str(own / "models"))
    flagged = pl.read_parquet(io.partition_files(own / "out", "flagged", day))
    row = flagged.filter(pl.col("event_id") == event["event_id"]).row(0, named=True)
    assert row["suppressed"] is True
    # the re-scored day no longer lists it as an alert; its triage history is kept
    assert event["alert_id"] not in {a["alert_id"] for a in _listed(own, "--date", day.isoformat(),
                                                                      "--status", "all")}
    assert triage_log(own / "data").filter(pl.col("alert_id") == event["alert_id"]).height == 1


@pytest.mark.parametrize(("args", "message"), [
    (["ack", "uba-000000000000000000000000"], "alert_id 'uba-000000000000000000000000' not found"),
    (["close", "{user_day}", "--verdict", "benign", "--suppress-similar"], "only event alerts"),
    (["close", "{event}", "--verdict", "malicious", "--suppress-similar"], "only a close with verdict benign"),
    (["reopen", "{event}"], "is open: reopen is not possible"),
    (["ack", "{event}", "--note", "x" * 2001], "note: 2001 characters"),
    # counted as given, as PATCH /alerts counts it: a CR LF and surrounding whitespace included
    (["ack", "{event}", "--note", "x" * 2000 + "\r\n"], "note: 2002 characters, at most 2000"),
    (["ack", "{event}", "--analyst", "a" * 256 + "\t"], "analyst: 257 characters, at most 256"),
    # printed by `alerts show` and the report: an escape or a carriage return rewrote the
    # reader's terminal (found by an attack); a note keeps line breaks, a name has none
    (["ack", "{event}", "--analyst", "ann\x1b[2J"], "analyst: holds the control character U+001B"),
    (["ack", "{event}", "--analyst", "ann\nbob"], "analyst: holds the control character U+000A"),
    (["ack", "{event}", "--note", "fine\rforged"], "note: holds the control character U+000D"),
])
def test_refusals_are_one_line_and_write_nothing(own: Path, args: list[str], message: str) -> None:
    alerts = _listed(own, "--days", "2")
    ids = {"event": next(a["alert_id"] for a in alerts if a["alert_type"] == "event"),
           "user_day": next(a["alert_id"] for a in alerts if a["alert_type"] == "user_day")}
    code, out, err = _run("alerts", *[a.format(**ids) for a in args], *_dirs(own))
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (out, err)
    assert io.table_part_files(own / "data", TRIAGE) == []
    assert io.table_part_files(own / "data", io.FEEDBACK) == []
    assert io.table_part_files(own / "data", io.SUPPRESSIONS) == []


def _star_events(day: str) -> str:
    """Six extreme events of a user whose id is literally ``*`` (ids are whatever the logs say)."""
    return "".join(json.dumps({"event_id": f"star-{i}", "user_id": "*", "timestamp": f"{day}T03:1{i}:00Z",
                               "event_type": "download", "session_duration_sec": 20000.0,
                               "events_in_session": 400, "device_type": "desktop", "session_id": "star"}) + "\n"
                   for i in range(6))


def test_suppress_similar_on_the_alert_of_a_user_named_star_is_refused(own: Path, tmp_path: Path) -> None:
    """Logs with a user named ``*`` got event alerts; a benign close of one with
    suppress-similar wrote a rule for user ``*``, the rules' wildcard, and the next score
    suppressed that reason kind for every user. Now refused (CLI one line, HTTP 422 on
    suppress_similar), nothing written; a plain benign close still works."""
    from api_world import running_server

    day = DAYS[1].isoformat()
    events = tmp_path / "star.jsonl"
    events.write_text(_star_events(day))
    _ok("ingest", str(events), "--data-dir", str(own / "data"))
    _ok("score", "--date", day, "--in-process", *_dirs(own), "--model-dir", str(own / "models"))
    stars = [a for a in _listed(own, "--date", day, "--type", "event") if a["user_id"] == "*"]
    assert stars, "the user named '*' has event alerts"
    code, out, err = _run("alerts", "close", stars[0]["alert_id"], "--verdict", "benign", "--suppress-similar",
                          *_dirs(own))
    assert code == 1 and "user id is '*'" in err and len(err.strip().splitlines()) == 1, (out, err)
    with running_server(_server_env(own, UBA_API_KEYS="k1"), tmp_path / "api.log") as server, \
            server.client(headers={"X-API-Key": "k1"}) as c:
        answer = c.patch(f"/alerts/{stars[0]['alert_id']}",
                         json={"status": "closed", "verdict": "benign", "suppress_similar": True})
        assert answer.status_code == 422 and answer.json()["detail"][0]["field"] == "suppress_similar"
    assert io.table_part_files(own / "data", io.SUPPRESSIONS) == []
    assert io.table_part_files(own / "data", TRIAGE) == []
    assert "closed" in _ok("alerts", "close", stars[0]["alert_id"], "--verdict", "benign", *_dirs(own))


def test_a_note_with_windows_line_ends_or_joiners_is_kept(own: Path) -> None:
    """Refusing control characters must not refuse a note typed on Windows (CR LF) or
    text that needs zero-width joiners (Persian, Indic scripts, emoji sequences)."""
    alert = next(a for a in _listed(own, "--days", "2") if a["alert_type"] == "event")
    note = "line one\r\nline two \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001F469\u200d\U0001F4BB"
    _ok("alerts", "ack", alert["alert_id"], "--note", note, "--analyst", "ann", *_dirs(own))
    assert triage_log(own / "data")["note"].to_list() == [note.replace("\r\n", "\n")]


def test_an_acknowledged_alert_cannot_be_acknowledged_twice(own: Path) -> None:
    alert = _listed(own, "--days", "1")[0]["alert_id"]
    _ok("alerts", "ack", alert, *_dirs(own))
    code, _, err = _run("alerts", "ack", alert, *_dirs(own))
    assert code == 1 and "is acknowledged: ack is not possible (possible: close, reopen)" in err


def test_list_show_and_export_write_an_alert_with_the_same_times(own: Path) -> None:
    """`alerts list --format jsonl` and `alerts show` printed Python's str of a datetime
    ("2026-03-22 02:30:35.584832+00:00", a space where RFC 3339 parsers want a T) while
    `export --format jsonl` wrote "2026-03-22T02:30:35.584832Z": one alert, two spellings."""
    _ok("alerts", "ack", _listed(own, "--days", "1")[0]["alert_id"], "--analyst", "ann", *_dirs(own))
    listed = _listed(own, "--days", "1", "--status", "all")
    day = str(listed[0]["event_date"])
    exported = {r["alert_id"]: r for r in map(json.loads, _ok(
        "export", "--date", day, "--format", "jsonl", "--output-dir", str(own / "out")).splitlines())}
    for alert in listed:
        assert {k: alert[k] for k in exported[alert["alert_id"]]} == exported[alert["alert_id"]]
    acked = next(a for a in listed if a["status"] == "acknowledged")
    shown = json.loads(_ok("alerts", "show", str(acked["alert_id"]), *_dirs(own)))
    assert shown["time"] == acked["time"] == exported[acked["alert_id"]]["time"]
    assert str(acked["updated_at"]).endswith("Z") and shown["history"][0]["recorded_at"] == acked["updated_at"]
    assert str(shown["time"])[10] == "T" and str(shown["time"]).endswith("Z")


def _server_env(world: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(world / "data"), UBA_MODEL_DIR=str(world / "models"),
               UBA_OUTPUT_DIR=str(world / "out"), **extra)
    return env


def test_triage_over_http_needs_a_key_and_answers_like_the_cli(own: Path, tmp_path: Path) -> None:
    from api_world import running_server

    with running_server(_server_env(own, UBA_API_KEYS="k1"), tmp_path / "api.log") as server, \
            server.client(headers={"X-API-Key": "k1"}) as c:
        listed = c.get("/alerts", params={"days": 2}).json()
        assert listed["count"] == len(_listed(own, "--days", "2")) and listed["days"] == [
            d.isoformat() for d in reversed(DAYS)]
        assert listed["alerts"] == _listed(own, "--days", "2")[:100]  # the same records, times alike
        first = next(a for a in listed["alerts"] if a["alert_type"] == "event")
        escaped = c.patch(f"/alerts/{first['alert_id']}", json={"status": "acknowledged", "analyst": "bo\u001b[2J"})
        assert escaped.status_code == 422 and escaped.json()["detail"][0]["field"] == "analyst", escaped.text
        acked = c.patch(f"/alerts/{first['alert_id']}", json={"status": "acknowledged", "analyst": "bo"})
        assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
        again = c.patch(f"/alerts/{first['alert_id']}", json={"status": "acknowledged"})
        assert again.status_code == 409 and "ack is not possible" in again.json()["detail"]
        no_verdict = c.patch(f"/alerts/{first['alert_id']}", json={"status": "closed"})
        assert no_verdict.status_code == 422 and no_verdict.json()["detail"][0]["field"] == "verdict"
        bad = c.patch(f"/alerts/{first['alert_id']}", json={"status": "done"})
        assert bad.status_code == 422 and "status" in str(bad.json()["detail"][0]["field"])
        closed = c.patch(f"/alerts/{first['alert_id']}", json={"status": "closed", "verdict": "malicious"})
        assert closed.json() == {"alert_id": first["alert_id"], "status": "closed", "verdict": "malicious",
                                 "feedback_id": first["event_id"], "suppression_rule": None}
        missing = c.patch("/alerts/uba-000000000000000000000000", json={"status": "acknowledged"})
        assert missing.status_code == 404
        closed_list = c.get("/alerts", params={"days": 2, "status": "closed"}).json()
        assert [a["alert_id"] for a in closed_list["alerts"]] == [first["alert_id"]]
        assert c.get("/alerts", params={"status": "nope"}).status_code == 422
        # a well-formed date never scored: no alerts to list (a 404), said without the server's
        # output path (it was a 422 blaming `date` that named the directory)
        unscored = c.get("/alerts", params={"date": "2000-01-01"})
        assert unscored.status_code == 404, unscored.text
        assert unscored.json()["detail"] == "2000-01-01 is not scored: no run of that date is published"
        assert httpx.get(server.url + "/alerts", timeout=10).status_code == 401  # no key
    assert confirmed_malicious_ids(own / "data") == {first["event_id"]}
    with running_server(_server_env(own), tmp_path / "open.log") as server:  # no keys: never open
        refused = httpx.get(server.url + "/alerts", timeout=10)
        assert refused.status_code == 403 and "API keys" in refused.json()["detail"][0]["message"]


def test_get_alerts_answers_the_model_its_openapi_schema_declares(own: Path, tmp_path: Path) -> None:
    """GET /alerts had no response model: /openapi.json said its 200 was ``{}``, so a client
    generator or schemathesis could check nothing. The answer (unchanged JSON, built by the
    route) must now be AlertList, key for key, and validate against the published schema,
    with every nullable triage and verdict field filled on some alert."""
    import jsonschema
    from api_world import running_server

    from uba.api.routes.alerts import AlertItem, AlertList

    alerts = _listed(own, "--days", "2")
    event = next(a for a in alerts if a["alert_type"] == "event")
    user_day = next(a for a in alerts if a["alert_type"] == "user_day")
    _ok("alerts", "ack", event["alert_id"], "--analyst", "ann", "--note", "looking", *_dirs(own))
    _ok("alerts", "close", user_day["alert_id"], "--verdict", "benign", *_dirs(own))
    with running_server(_server_env(own, UBA_API_KEYS="k1"), tmp_path / "api.log") as server, \
            server.client(headers={"X-API-Key": "k1"}) as c:
        answer = c.get("/alerts", params={"days": 2, "status": "all", "limit": 10_000})
        document = c.get("/openapi.json").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == list(AlertList.model_fields)
    assert all(list(alert) == list(AlertItem.model_fields) for alert in body["alerts"])
    assert AlertList.model_validate_json(answer.content).model_dump(mode="json").keys() == body.keys()
    assert {a["alert_type"] for a in body["alerts"]} == {"event", "user_day", "risk"}
    filled = {k for a in body["alerts"] for k, v in a.items() if v is not None}
    assert {"note", "analyst", "updated_at", "verdict", "verdict_source", "verdict_at", "event_id"} <= filled
    declared = document["paths"]["/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert declared == {"$ref": "#/components/schemas/AlertList"}, declared
    listed = document["components"]["schemas"]["AlertList"]
    assert set(listed["properties"]) == {"count", "days", "alerts", "unreadable_days"}
    jsonschema.validate(body, {**declared, "components": document["components"]},
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_every_view_shows_the_verdict_in_effect_whichever_way_it_was_given(own: Path, tmp_path: Path) -> None:
    """A verdict from `uba-batch feedback` (by event id or alert id) did not show in `alerts
    list`, `alerts show` or GET /alerts: they took the latest triage action's verdict, while
    entity risk reads the feedback store, where a close writes too. Now every view shows the
    latest label under either id, with its source; the status stays the triage table's."""
    from api_world import running_server

    alerts = _listed(own, "--days", "2")
    events = [a for a in alerts if a["alert_type"] == "event"]
    by_event, by_alert, closed = events[:3]
    user_day = next(a for a in alerts if a["alert_type"] == "user_day")
    csv = tmp_path / "verdicts.csv"
    csv.write_text(f"event_id,label,analyst\n{by_event['event_id']},malicious,ann\n"
                   f"{by_alert['alert_id']},benign,ann\n{user_day['alert_id']},benign,ann\n")
    _ok("feedback", str(csv), *_dirs(own))
    _ok("alerts", "close", closed["alert_id"], "--verdict", "benign", *_dirs(own))
    later = tmp_path / "later.csv"  # disagrees with the close, given after it: the newest wins
    later.write_text(f"event_id,label\n{closed['alert_id']},malicious\n")
    _ok("feedback", str(later), *_dirs(own))

    expected = {by_event["alert_id"]: ("open", "malicious", "csv:verdicts.csv"),
                by_alert["alert_id"]: ("open", "benign", "csv:verdicts.csv"),
                user_day["alert_id"]: ("open", "benign", "csv:verdicts.csv"),
                closed["alert_id"]: ("closed", "malicious", "csv:later.csv")}
    listed = {a["alert_id"]: a for a in _listed(own, "--days", "2", "--status", "all")}
    assert {i: (listed[i]["status"], listed[i]["verdict"]) for i in expected} == {i: e[:2] for i, e in expected.items()}
    assert {i: listed[i]["verdict_source"] for i in expected} == {i: e[2] for i, e in expected.items()}
    assert all(str(listed[i]["verdict_at"]).endswith("Z") for i in expected)
    untouched = next(a for a in events[3:] if a["alert_id"] not in expected)
    assert (listed[untouched["alert_id"]]["verdict"], listed[untouched["alert_id"]]["verdict_source"]) == (None, None)
    for alert_id, (status, verdict, source) in expected.items():
        shown = json.loads(_ok("alerts", "show", alert_id, *_dirs(own)))
        assert (shown["status"], shown["verdict"], shown["verdict_source"]) == (status, verdict, source), alert_id
    shown = json.loads(_ok("alerts", "show", closed["alert_id"], *_dirs(own)))
    assert shown["history"][-1]["verdict"] == "benign", "the close's own verdict stays in its history"
    text = _ok("alerts", "list", "--days", "2", "--status", "all", "--limit", "0", *_dirs(own))
    line = next(x for x in text.splitlines() if x.startswith(closed["alert_id"]))
    assert "verdict=malicious from 'csv:later.csv'" in line

    with running_server(_server_env(own, UBA_API_KEYS="k1"), tmp_path / "api.log") as server, \
            server.client(headers={"X-API-Key": "k1"}) as c:
        served = c.get("/alerts", params={"days": 2, "status": "all", "limit": 10_000}).json()["alerts"]
        assert served == list(listed.values())
        reopened = c.patch(f"/alerts/{closed['alert_id']}", json={"status": "open"})
        assert reopened.status_code == 200, reopened.text
        again = {a["alert_id"]: a for a in c.get("/alerts", params={"days": 2}).json()["alerts"]}
        assert (again[closed["alert_id"]]["status"], again[closed["alert_id"]]["verdict"]) == ("open", "malicious"), \
            "a reopen keeps the verdict in effect (entity risk still reads it)"
        part = next((own / "data" / "feedback").rglob("*.parquet"))
        part.write_bytes(b"PAR1 not a parquet part PAR1")  # the server's own store, not the request
        broken = c.get("/alerts", params={"days": 2})
        assert broken.status_code == 503 and part.name in broken.json()["detail"], broken.text


def test_the_report_counts_the_days_findings_by_status(own: Path, tmp_path: Path) -> None:
    import re

    day = DAYS[1]
    alerts = _listed(own, "--date", day.isoformat())
    events = [a for a in alerts if a["alert_type"] == "event"]
    _ok("alerts", "ack", events[0]["alert_id"], *_dirs(own))
    _ok("alerts", "close", events[1]["alert_id"], "--verdict", "benign", *_dirs(own))
    page = tmp_path / "r.html"
    _ok("report", "--date", day.isoformat(), *_dirs(own), "--out", str(page))
    table = re.search(r'<table id="triage">.*?</table>', page.read_text(), re.S)
    assert table is not None
    row = re.search(r"<tr><td>flagged events</td>(.*?)</tr>", table.group(0))
    assert row is not None
    counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', row.group(1))]
    assert counts == [len(events) - 2, 1, 1]


def test_two_concurrent_closes_of_one_alert_let_only_one_through(own: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read "open" before either wrote, and both closes were stored (found by review):
    the status check and the writes now hold the triage table's lock."""
    import threading

    from uba.alerting import triage

    alert = _listed(own, "--days", "2")[0]["alert_id"]
    read_status = triage.current_status
    started = threading.Event()

    def slow_status(data_dir: Path, alert_id: str) -> str:
        found = read_status(data_dir, alert_id)
        started.set()
        threading.Event().wait(0.3)  # give the other close every chance to overlap
        return found

    monkeypatch.setattr(triage, "current_status", slow_status)
    outcomes: list[str] = []

    def close(verdict: str) -> None:
        try:
            triage.apply_action(own / "out", own / "data", alert, "close", verdict=verdict)
            outcomes.append("closed")
        except triage.TransitionError:
            outcomes.append("refused")

    threads = [threading.Thread(target=close, args=(v,)) for v in ("benign", "malicious")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["closed", "refused"]
    assert triage_log(own / "data").filter(pl.col("alert_id") == alert)["action"].to_list() == ["close"]
    assert io.table_part_files(own / "data", io.FEEDBACK).__len__() == 1


def test_a_truncated_triage_part_is_one_line_naming_it_and_the_next_action_still_lands(own: Path) -> None:
    first = _listed(own, "--days", "2")[0]["alert_id"]
    _ok("alerts", "ack", first, *_dirs(own))
    (part,) = io.table_part_files(own / "data", TRIAGE)
    part.write_bytes(part.read_bytes()[:40])  # a disk that filled up under another tool
    code, out, err = _run("alerts", "list", *_dirs(own))
    assert code == 1 and "Traceback" not in out + err, (out, err)
    assert f"{part} is not a readable Parquet file" in err and len(err.strip().splitlines()) == 1, err
    part.rename(part.with_suffix(".broken"))  # the operator moves it aside, as the message says
    assert f"{first}: acknowledged" in _ok("alerts", "ack", first, *_dirs(own))


HOSTILE_ARGS = Path(__file__).parent / "hostile" / "cli_args"
STORES = ("triage", "feedback", "suppressions", "directory")


def _stored_files(data: Path) -> set[Path]:
    return {p for store in STORES for p in (data / store).rglob("*.parquet")}


@pytest.mark.parametrize("name", sorted(p.stem for p in HOSTILE_ARGS.glob("*.json")))
def test_hostile_cli_arguments(name: str, own: Path, tmp_path: Path) -> None:
    """The corpus tests/hostile/cli_args/ through a real `uba-batch` process, its arguments
    as bytes: a note, an analyst or a file name that is not UTF-8 was a traceback at the
    first write; it is now one line naming the option and the byte, and nothing is written.
    A rule's note holding an escape or a bidi override is refused by the analyst text rule,
    and a file name holding a line break or an escape is quoted escaped in the error line."""
    import os
    import subprocess
    import sys

    case = json.loads((HOSTILE_ARGS / f"{name}.json").read_text())
    event = next(a for a in _listed(own, "--days", "2") if a["alert_type"] == "event")
    scratch = tmp_path / "case"
    scratch.mkdir()

    def filled(text: str) -> str:
        return (text.replace("$EVENT_ALERT", event["alert_id"]).replace("$EVENT_ID", event["event_id"])
                .replace("$TMP", str(scratch)))

    for file_name, text in case.get("files", {}).items():
        (scratch / file_name).write_text(filled(text))  # a U+DCxx in the name is written as its byte
    env = {**os.environ, "UBA_DATA_DIR": str(own / "data"), "UBA_OUTPUT_DIR": str(own / "out")}
    before = _stored_files(own / "data")
    run = subprocess.run([str(Path(sys.executable).with_name("uba-batch")).encode(),
                          *(filled(a).encode("utf-8", "surrogateescape") for a in case["args"])],
                         env=env, capture_output=True, timeout=120)
    out, err = run.stdout.decode("utf-8", "replace"), run.stderr.decode("utf-8", "replace")
    assert run.returncode == case["exit_code"] and "Traceback" not in err, (out, err)
    if case["exit_code"]:
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and filled(case["error"]) in line, line
        assert _stored_files(own / "data") == before, "a refusal writes nothing"
    else:
        assert filled(case["output"]) in out, out
        if "stored_note_length" in case:
            assert len(triage_log(own / "data")["note"][-1]) == case["stored_note_length"]


def test_a_close_killed_while_marking_risk_stale_is_not_on_record_unmarked(own: Path) -> None:
    """A benign close stores the verdict, writes its row, then marks the risk it changed
    stale. SIGKILLed between the row and the marking, the alert stayed closed with its
    verdict in effect and its days never marked: nothing could repair it, a second close
    being refused (found by an attack). The marking now comes before the row: killed there,
    the alert is still open, and closing it again marks the days. (The test holds the runs'
    stale-marks lock so the close waits exactly there, and kills it then.)"""
    from uba.alerting.risk import read_risk, stale_marker
    from uba.manifest import read_manifest

    table = read_risk(own / "out", DAYS[0])
    assert table is not None
    alert = next(c for cs in table["contributions"] for c in cs if c["event_id"])["alert_id"]
    _close_killed_waiting_for_the_stale_marks_lock(own, alert, "--date", DAYS[0].isoformat())
    shown = json.loads(_ok("alerts", "show", alert, *_dirs(own)))  # every read still works
    marked = all(stale_marker(read_manifest(own / "out", day)) for day in DAYS)
    assert shown["status"] == "open" or marked, "closed on record, its risk days never marked stale"
    assert "closed" in _ok("alerts", "close", alert, "--verdict", "benign", *_dirs(own))
    assert all(stale_marker(read_manifest(own / "out", day)) for day in DAYS)


def _close_killed_waiting_for_the_stale_marks_lock(own: Path, alert: str, *options: str) -> None:
    """A benign ``alerts close`` SIGKILLed where it waits for the runs' stale-marks lock
    (which the test holds): after anything written before the marks, before the row."""
    import os
    import sys

    from waiting import kill_when_blocked_on_flock

    env = {**os.environ, "UBA_DATA_DIR": str(own / "data"), "UBA_OUTPUT_DIR": str(own / "out")}
    kill_when_blocked_on_flock(own / "out" / io.RUNS / ".risk-stale.lock",
                               [str(Path(sys.executable).with_name("uba-batch")), "alerts", "close", alert,
                                "--verdict", "benign", *options], env, timeout=60)


def test_a_suppress_similar_close_killed_before_its_row_adds_its_rule_once_when_closed_again(own: Path) -> None:
    """A benign ``--suppress-similar`` close adds its rule before the close's row (the commit
    point: the alert closed). SIGKILLed in between, the alert stayed open with the rule in
    force, and closing it again, as the analyst must, added the same rule a second time
    (found by an attack; undoing it then took two ``suppress remove``). The close reuses an
    active rule of the same user and reason kind that never expires. (The test holds the
    runs' stale-marks lock, which the close takes after the rule, and kills it there.)"""
    from uba.alerting.feedback import listed_rules
    from uba.alerting.risk import read_risk

    day = DAYS[0].isoformat()
    table = read_risk(own / "out", DAYS[0])
    assert table is not None
    counted = {c["alert_id"] for cs in table["contributions"] for c in cs}  # its verdict marks risk days
    event = next(a for a in _listed(own, "--date", day, "--type", "event") if a["alert_id"] in counted)
    alert = str(event["alert_id"])
    _close_killed_waiting_for_the_stale_marks_lock(own, alert, "--suppress-similar", "--date", day)
    assert json.loads(_ok("alerts", "show", alert, *_dirs(own)))["status"] == "open", "killed before its row"
    assert "closed" in _ok("alerts", "close", alert, "--verdict", "benign", "--suppress-similar", *_dirs(own))
    rules = listed_rules(own / "data")
    assert rules.height == 1, rules  # one rule, named by the close that is on record
    assert (rules["user_id"][0], rules["reason_kind"][0]) == (event["user_id"], event["reason_kinds"][0])
    assert triage_log(own / "data")["suppression_rule"].to_list() == [rules["rule_id"][0]]
