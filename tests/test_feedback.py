"""Analyst feedback and suppression rules, on real Parquet tables in tmp_path."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.alerting.feedback import (
    active_rules,
    add_rule,
    confirmed_malicious_ids,
    load_rules,
    record_feedback,
    record_feedback_csv,
    remove_rule,
    rule_tuples,
)
from uba.alerting.thresholds import decide
from uba.errors import UserError
from uba.features.reasons import REASON_KINDS
from uba.io import latest_feedback
from uba.schema import alert_id

KINDS = REASON_KINDS
DAY = date(2026, 3, 20)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_feedback_is_stored_and_latest_label_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _csv(tmp_path / "a.csv", "event_id,label,analyst,note\ne1,malicious,ann,exfil\n"
                                      "e2,Benign,ann,\ne3,malicious,,\n")
    summary = record_feedback_csv(data, first)
    assert (summary.rows, summary.benign, summary.malicious) == (3, 1, 2)
    assert summary.path.parent == data / "feedback"
    assert confirmed_malicious_ids(data) == {"e1", "e3"}
    record_feedback(data, [{"event_id": "e1", "label": "benign", "analyst": "bob"}])
    latest = latest_feedback(data).collect().sort("event_id")
    assert latest["label"].to_list() == ["benign", "benign", "malicious"]
    assert latest.filter(pl.col("event_id") == "e1")["analyst"].item() == "bob"
    assert confirmed_malicious_ids(data) == {"e3"}
    assert len(io.table_part_files(data, io.FEEDBACK)) == 2, "feedback is append-only"


def test_later_row_in_one_file_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    record_feedback_csv(data, _csv(tmp_path / "f.csv", "event_id,label\ne9,malicious\ne9,benign\n"))
    assert confirmed_malicious_ids(data) == set()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("event_id,label\ne1,malicious\ne2,suspicious\n", r"f.csv line 3: label 'suspicious' is not one of benign, malicious"),
        ("event_id,label\ne1,malicious\n,benign\n", r"f.csv line 3: event_id is missing"),
        ("event_id,label\ne1,\n", r"f.csv line 2: label None is not one of"),
        ("id,label\ne1,benign\n", r"missing column\(s\) event_id"),
        ("event_id,label\n", "feedback has no rows"),
    ],
)
def test_bad_feedback_names_row_and_value_and_stores_nothing(tmp_path: Path, text: str, message: str) -> None:
    data = tmp_path / "data"
    with pytest.raises(UserError, match=message):
        record_feedback_csv(data, _csv(tmp_path / "f.csv", text))
    assert io.table_part_files(data, io.FEEDBACK) == []


def test_no_feedback_means_no_malicious_ids(tmp_path: Path) -> None:
    assert confirmed_malicious_ids(tmp_path) == set()


def test_feedback_cli_reports_counts_and_errors_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = _csv(tmp_path / "g.csv", "event_id,label\ne1,malicious\ne2,benign\n")
    result = CliRunner().invoke(cli, ["feedback", str(good), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "2 labels (1 benign, 1 malicious)" in result.output
    bad = _csv(tmp_path / "b.csv", "event_id,label\ne1,evil\n")
    result = CliRunner().invoke(cli, ["feedback", str(bad), "--data-dir", str(data)])
    assert result.exit_code == 1
    assert "line 2: label 'evil'" in result.output
    assert confirmed_malicious_ids(data) == {"e1"}



def test_a_feedback_file_named_like_a_glob_pattern_is_read_as_that_file(tmp_path: Path) -> None:
    """``labels[1].csv`` is a legal name; read as a glob it stored ``labels1.csv``'s labels."""
    data = tmp_path / "data"
    ours = _csv(tmp_path / "labels[1].csv", "event_id,label\ne1,malicious\n")
    _csv(tmp_path / "labels1.csv", "event_id,label\ne2,malicious\n")
    result = CliRunner().invoke(cli, ["feedback", str(ours), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert confirmed_malicious_ids(data) == {"e1"}

def _scored() -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": ["a", "b", "c", "d", "e", "f"],
        "user_id": ["u1", "u1", "u2", "u2", "u3", "u1"],
        "anomaly_score": [0.9, 0.8, 0.85, 0.3, 0.7, 0.75],
        "reason_kinds": [["download_intensity", "hour"], ["hour", "download_intensity"],
                         ["download_intensity"], ["download_intensity"], ["device"], None],
    })


def apply_suppressions(scored: pl.DataFrame, rules: pl.DataFrame, day: date) -> pl.DataFrame:
    """The scored events with the decision the shards and the API take (``decide``, cut 0.5,
    the rules in force on ``day``) as ``suppressed`` / ``suppressed_by`` columns."""
    cuts = np.full(scored.height, 0.5)
    decision = decide(scored["anomaly_score"].to_numpy(), cuts, scored["user_id"],
                      scored["reason_kinds"].list.first(), rule_tuples(active_rules(rules, day)))
    return scored.with_columns(pl.Series("suppressed_by", decision.suppressed_by, dtype=pl.String),
                               pl.Series("suppressed", decision.suppressed))


def test_rule_suppresses_exactly_the_matching_top_kind_alerts(tmp_path: Path) -> None:
    rule = add_rule(tmp_path, "u1", "download_intensity", KINDS, today=DAY)
    out = apply_suppressions(_scored(), load_rules(tmp_path), DAY)
    assert out.height == 6, "suppression never drops rows"
    assert out.filter(pl.col("suppressed"))["event_id"].to_list() == ["a"]
    assert out.filter(pl.col("event_id") == "a")["suppressed_by"].item() == rule
    assert out.filter(pl.col("event_id") == "a")["anomaly_score"].item() == 0.9
    # b mentions download_intensity but its top reason is the hour: still an alert.
    assert not out.filter(pl.col("event_id") == "b")["suppressed"].item()


def test_wildcards_and_unflagged_rows(tmp_path: Path) -> None:
    add_rule(tmp_path, "*", "download_intensity", KINDS, today=DAY)
    add_rule(tmp_path, "u3", "*", KINDS, today=DAY)
    out = apply_suppressions(_scored(), load_rules(tmp_path), DAY)
    assert sorted(out.filter(pl.col("suppressed"))["event_id"].to_list()) == ["a", "c", "e"]
    assert not out.filter(pl.col("event_id") == "d")["suppressed"].item(), "d is not an alert"


def test_expired_and_removed_rules_do_not_apply(tmp_path: Path) -> None:
    kept = add_rule(tmp_path, "u2", "download_intensity", KINDS, expires=DAY, today=DAY)
    gone = add_rule(tmp_path, "u1", "*", KINDS, today=DAY)
    remove_rule(tmp_path, gone)
    rules = load_rules(tmp_path)
    assert active_rules(rules, None)["rule_id"].to_list() == [kept]
    on_expiry = apply_suppressions(_scored(), rules, DAY)
    assert on_expiry.filter(pl.col("suppressed"))["event_id"].to_list() == ["c"]
    after = apply_suppressions(_scored(), rules, date(2026, 3, 21))
    assert not after["suppressed"].any()
    with pytest.raises(UserError, match="no active suppression rule"):
        remove_rule(tmp_path, gone)


def test_bad_rules_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="reason kind 'typing' is not one of"):
        add_rule(tmp_path, "u1", "typing", KINDS, today=DAY)
    with pytest.raises(UserError, match="already in the past"):
        add_rule(tmp_path, "u1", "hour", KINDS, expires=date(2026, 3, 19), today=DAY)
    assert load_rules(tmp_path).height == 0


def test_suppress_cli_add_list_remove(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    runner = CliRunner()
    added = runner.invoke(cli, ["suppress", "add", "--user", "u7", "--reason-kind", "hour",
                                "--note", "night shift", "--data-dir", data])
    assert added.exit_code == 0, added.output
    rule_id = added.output.split()[2].rstrip(":")
    listed = runner.invoke(cli, ["suppress", "list", "--data-dir", data])
    assert rule_id in listed.output and "night shift" in listed.output
    bad = runner.invoke(cli, ["suppress", "add", "--user", "u7", "--reason-kind", "nope", "--data-dir", data])
    assert bad.exit_code == 1 and "reason kind 'nope'" in bad.output
    removed = runner.invoke(cli, ["suppress", "remove", rule_id, "--data-dir", data])
    assert removed.exit_code == 0, removed.output
    assert "no active rules" in runner.invoke(cli, ["suppress", "list", "--data-dir", data]).output

    principal = "u00003/admin@EXAMPLE.COM"  # longer than the user column's 16 characters
    assert runner.invoke(cli, ["suppress", "add", "--user", principal, "--reason-kind", "hour",
                               "--data-dir", data]).exit_code == 0
    (header, row) = runner.invoke(cli, ["suppress", "list", "--data-dir", data]).output.splitlines()
    assert row.split()[1:4] == [principal, "hour", "never"], row
    assert header.index("reason kind") == row.index("hour"), (header, row)


def test_post_feedback_on_a_real_server(tmp_path: Path) -> None:
    """POST /feedback stores what `uba-batch feedback` stores; bad items are refused whole."""
    import os

    from api_world import running_server

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(UBA_DATA_DIR=str(data), UBA_MODEL_DIR=str(tmp_path / "no-model"),
               UBA_OUTPUT_DIR=str(tmp_path / "out"), UBA_API_KEYS="k-123", UBA_API__MAX_BATCH="3")
    items = [{"event_id": "e1", "label": "malicious", "analyst": "ann", "note": "exfil"},
             {"event_id": "e2", "label": "benign"}]
    with running_server(env, tmp_path / "uvicorn.log") as server, server.client() as client:
        assert client.post("/feedback", json={"items": items}).status_code == 401
        keyed = {"X-API-Key": "k-123"}
        stored = client.post("/feedback", json={"items": items}, headers=keyed)
        assert stored.status_code == 201, stored.text
        assert stored.json() == {"stored": 2, "benign": 1, "malicious": 1}
        bad = client.post("/feedback", json={"items": [items[0], {"event_id": "e3", "label": "evil"}]},
                          headers=keyed)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["field"] == "items.1.label"
        assert bad.json()["detail"][0]["value"] == "evil"
        blank = client.post("/feedback", json={"items": [{"event_id": "  ", "label": "benign"}]}, headers=keyed)
        assert blank.status_code == 422 and blank.json()["detail"][0] == {  # the event id rule
                "field": "items.0.event_id", "message": "is empty or blank", "value": "  "}
        too_many = client.post("/feedback", json={"items": items * 2}, headers=keyed)
        assert too_many.status_code == 413 and "api.max_batch" in too_many.text
        assert client.post("/feedback", content=b"event_id,label", headers=keyed).status_code == 415
        surrogate = client.post("/feedback", content=b'{"items": [{"event_id": "e4", "label": "benign", '
                                b'"analyst": "\\ud800"}]}', headers={**keyed, "content-type": "application/json"})
        assert surrogate.status_code == 422 and surrogate.json()["detail"][0]["field"] == "items.0.analyst"
    assert confirmed_malicious_ids(data) == {"e1"}
    assert len(io.table_part_files(data, io.FEEDBACK)) == 1, "refused requests store nothing"
    assert latest_feedback(data).collect().filter(pl.col("event_id") == "e1")["source"].item() == "api"


def test_train_can_drop_confirmed_malicious_events_and_says_how_many(shared_world, tmp_path: Path) -> None:
    """Verdicts feed the next `train`, which reports what it left out. Verdicts are
    stored in the data directory, so the session's generated world is copied, not shared."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from datetime import timedelta

    import polars as pl

    uba = str(Path(sys.executable).with_name("uba-batch"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    data, models = tmp_path / "data", tmp_path / "models"
    shutil.copytree(shared_world.data_dir, data, symlinks=True)

    def run(*args: str) -> str:
        result = subprocess.run([uba, *args], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    end = shared_world.score_dates[0] - timedelta(days=2)  # a window inside the generated days
    window = [end - timedelta(days=i) for i in range(6)]
    events = pl.concat([io.scan_events(data, day).collect() for day in window]).sort("event_id")
    verdicts = pl.DataFrame({"event_id": events["event_id"].head(5).to_list(),
                             "label": ["malicious", "malicious", "malicious", "benign", "benign"]})
    verdicts.write_csv(tmp_path / "verdicts.csv")
    run("feedback", str(tmp_path / "verdicts.csv"), "--data-dir", str(data))
    # later verdicts by alert id, as the export names alerts: the first malicious verdict is
    # taken back (benign under its alert id), two more events are called malicious
    by_alert = pl.DataFrame({"event_id": [alert_id("event", e) for e in events["event_id"].to_list()[0:7:6]]
                             + [alert_id("event", events["event_id"][5])],
                             "label": ["benign", "malicious", "malicious"]})
    by_alert.write_csv(tmp_path / "by_alert.csv")
    run("feedback", str(tmp_path / "by_alert.csv"), "--data-dir", str(data))
    printed = run("train", "--data-dir", str(data), "--end-date", end.isoformat(), "--window-days", "6", "--min-days", "6",
                  "--model-dir", str(models), "--exclude-malicious")
    assert "excluded 4 confirmed-malicious events from training" in printed  # events 1, 2, 5 and 6
    bundle = json.loads(next(models.glob("*/bundle.json")).read_text())
    assert bundle["rows"]["excluded_confirmed_malicious"] == 4
    assert bundle["rows"]["training"] == events.height - 4


HOSTILE_FEEDBACK = Path(__file__).parent / "hostile" / "feedback"


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".expect.json")
                                        for p in HOSTILE_FEEDBACK.glob("*.expect.json")))
def test_hostile_feedback_csv(name: str, tmp_path: Path) -> None:
    """The hostile corpus of ``uba-batch feedback`` (tests/hostile/feedback/<case>.csv and its
    verdict): ids follow the event id rule of ingest and POST /feedback, a repeated header
    column is refused, every refusal is one line and stores nothing, rows with no value at
    all are skipped and counted (``output``: text the summary line holds)."""
    import json

    expect = json.loads((HOSTILE_FEEDBACK / f"{name}.expect.json").read_text())
    source = tmp_path / f"{name}.csv"
    source.write_bytes((HOSTILE_FEEDBACK / f"{name}.csv").read_bytes())
    result = CliRunner().invoke(cli, ["feedback", str(source), "--data-dir", str(tmp_path / "d")])
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert result.exit_code == expect["exit_code"] and "Traceback" not in result.output, result.output
    stored = io.table_part_files(tmp_path / "d", io.FEEDBACK)
    if expect["exit_code"]:
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and expect["error"] in line, line
        assert stored == []
    else:
        assert pl.read_parquet(stored).height == expect["stored"]
        assert expect.get("output", "") in result.stdout, result.stdout


def test_suppress_list_shows_each_rule_on_one_printable_line(tmp_path: Path) -> None:
    """A rule's note (a triage close with suppress_similar stores the analyst's note, which
    may hold line breaks) was printed as it was: a line break printed a forged row of a
    rule silencing every alert of every user, and an escape rewrote the terminal. `suppress
    add` now refuses the escape (the analyst text rule), so the rule holding one is stored
    as one written before that rule was: `suppress list` must still print it safely."""
    from datetime import UTC, datetime

    from uba.alerting.feedback import RULE_SCHEMA

    data = tmp_path / "data"
    forged = "abc1234567  *               *                   never       forged"
    io.append_table_part(pl.DataFrame([{"rule_id": "0123456789", "action": "add", "user_id": "u7",
                                        "reason_kind": "hour", "expires": None,
                                        "note": f"night shift\n{forged}\x1b[2J\u202e",
                                        "recorded_at": datetime.now(UTC)}], schema=RULE_SCHEMA),
                         data, io.SUPPRESSIONS)
    listed = CliRunner().invoke(cli, ["suppress", "list", "--data-dir", str(data)]).output.splitlines()
    assert len(listed) == 2 and listed[1].endswith(f"night shift {' '.join(forged.split())}?[2J?"), listed
    added = CliRunner().invoke(cli, ["suppress", "add", "--user", "u7", "--reason-kind", "hour",
                                     "--note", f"night shift\n{forged}", "--data-dir", str(data)])
    assert added.exit_code == 0, added.output  # a line break in a note is legitimate
    listed = CliRunner().invoke(cli, ["suppress", "list", "--data-dir", str(data)]).output.splitlines()
    assert len(listed) == 3 and listed[2].endswith(f"night shift {' '.join(forged.split())}"), listed


@pytest.mark.parametrize("user", ["u7\nabc", "u7\x1b[2J", "u\u202e7"])
def test_a_suppression_rule_for_a_user_id_no_event_can_have_is_refused(tmp_path: Path, user: str) -> None:
    """`suppress add --user` stored any text: a line break or an escape in it printed a
    forged row in `suppress list`, and no event's user can match it anyway."""
    data = tmp_path / "data"
    added = CliRunner().invoke(cli, ["suppress", "add", "--user", user, "--reason-kind", "hour",
                                     "--data-dir", str(data)])
    assert added.exit_code == 1 and "which no user id may hold" in added.output, added.output
    assert not (data / io.SUPPRESSIONS).exists()


# (text, what a name's check says, what a note's check says): None for accepted
ANALYST_TEXT = [
    ("ann", None, None),
    ("a\nb", "U+000A", None),
    ("a\tb", "U+0009", None),
    ("a\r\nb", "U+000A", None),  # a note typed on Windows: stored with \n
    ("a\rb", "U+000D", "U+000D"),
    ("\x1b[2J", "U+001B", "U+001B"),
    ("a\x9bb", "U+009B", "U+009B"),
    ("a\u202eb", "U+202E", "U+202E"),
    ("a\u2028b", "U+2028", "U+2028"),
    ("a\ufeffb", "U+FEFF", "U+FEFF"),
    ("\u0645\u06cc\u200c\u062e", None, None),  # a zero-width non-joiner that Persian needs
]


@pytest.mark.parametrize(("text", "as_name", "as_note"), ANALYST_TEXT)
def test_one_analyst_text_rule_for_the_csv_the_api_and_suppression_rules(
        tmp_path: Path, text: str, as_name: str | None, as_note: str | None) -> None:
    """POST /feedback and a feedback CSV stored any analyst and note, while a close through
    `uba-batch alerts` refused control and format characters, and `suppress add --note`
    stored them too: each way in now gives the same verdict for the same text, naming the
    code point, and stores the same text."""
    import csv
    import re

    from uba.api.schemas import build_feedback_model
    from uba.settings import load_settings

    stored_note = text.replace("\r\n", "\n")
    model = build_feedback_model(load_settings().api)
    for field, verdict in (("analyst", as_name), ("note", as_note)):
        source = tmp_path / f"{field}.csv"
        with source.open("w", newline="") as out:
            csv.writer(out).writerows([["event_id", "label", field], ["e1", "benign", text]])
        row = {"event_id": "e1", "label": "benign", field: text}
        if verdict is None:
            record_feedback_csv(tmp_path / field, source)
            assert latest_feedback(tmp_path / field).collect()[field].to_list() == [stored_note]
            assert getattr(model.model_validate({"items": [row]}).items[0], field) == stored_note
        else:
            with pytest.raises(UserError, match=f"line 2: {field} holds the .*{re.escape(verdict)}"):
                record_feedback_csv(tmp_path / field, source)
            with pytest.raises(ValueError, match=re.escape(verdict)) as refused:
                model.model_validate({"items": [row]})
            assert refused.value.errors()[0]["loc"] == ("items", 0, field)
    rule = CliRunner().invoke(cli, ["suppress", "add", "--user", "u7", "--reason-kind", "hour", "--note", text,
                                    "--data-dir", str(tmp_path / "rules")])
    if as_note is None:
        assert rule.exit_code == 0 and load_rules(tmp_path / "rules")["note"].to_list() == [stored_note]
    else:
        assert rule.exit_code == 1 and "suppression rule: note holds the" in rule.output and as_note in rule.output


# (field, text, refused): the limits count the text as given, CR LF and surrounding whitespace included
GIVEN_LENGTHS = [
    ("note", "x" * 2000, False),
    ("note", "x" * 2000 + "\r\n", True),  # 2,000 characters and a spreadsheet's line end
    ("note", "a\r\n" * 700, True),  # 1,400 characters stored, 2,100 given: 700 Windows lines
    ("analyst", "a" * 256, False),
    ("analyst", "a" * 256 + "\t", True),
]


@pytest.mark.parametrize(("field", "text", "refused"), GIVEN_LENGTHS)
def test_one_length_limit_for_the_csv_the_api_and_suppression_rules(
        tmp_path: Path, field: str, text: str, refused: bool) -> None:
    """POST /feedback and PATCH /alerts count a note or an analyst as given (their schema's
    maxLength, before the analyst text rule), while a feedback CSV, `uba-batch alerts` and
    `suppress add` counted it as stored (CR LF as one, surrounding whitespace removed): the
    same note was stored from a CSV and refused by the API (found by an attack). Every way
    in now counts it as given."""
    import csv

    from uba.api.schemas import build_feedback_model
    from uba.settings import load_settings

    model = build_feedback_model(load_settings().api)
    source = tmp_path / "verdict.csv"
    with source.open("w", newline="") as out:
        csv.writer(out).writerows([["event_id", "label", field], ["e1", "benign", text]])
    row = {"event_id": "e1", "label": "benign", field: text}
    rule_args = ["suppress", "add", "--user", "u7", "--reason-kind", "hour", "--note", text,
                 "--data-dir", str(tmp_path / "rules")]
    if refused:
        with pytest.raises(UserError, match=f"line 2: {field} is {len(text)} characters, at most"):
            record_feedback_csv(tmp_path / "d", source)
        with pytest.raises(ValueError, match="at most"):
            model.model_validate({"items": [row]})
    else:
        record_feedback_csv(tmp_path / "d", source)
        model.model_validate({"items": [row]})
    if field == "note":
        rule = CliRunner().invoke(cli, rule_args)
        assert rule.exit_code == (1 if refused else 0), rule.output
        assert not refused or f"suppression rule: note is {len(text)} characters, at most 2000" in rule.output
