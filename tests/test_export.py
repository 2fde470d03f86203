"""`uba-batch export` on the session's alert world (conftest's ``alert_world``: the shared
world's data retrained with the real CLI to flag plenty), its days scored here with the real `backfill`: OCSF 1.5.0 and
ECS 9.2.0 exports validate against the vendored schemas, and alert ids survive re-scoring."""

from __future__ import annotations

import csv
import io as stdio
import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
from click.testing import CliRunner
from worlds import SCORE_DATES, START, TRAIN_END, World

from jobs.cli import cli
from uba.alerting.formats import render
from uba.alerting.records import RECORD_SCHEMA, alert_id

FIXTURES = Path(__file__).parent / "fixtures"
DAYS = SCORE_DATES


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args[:2], result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def world(alert_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The alert world's days backfilled into this module's output. Its data directory is
    copied: scoring and the re-training below write aggregates and baselines there."""
    root = tmp_path_factory.mktemp("export")
    data, out = str(root / "data"), str(root / "out")
    shutil.copytree(alert_world.data_dir, data, symlinks=True)
    _cli("backfill", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat(), "--data-dir", data,
         "--model-dir", str(alert_world.model_dir), "--output-dir", out, "--in-process")
    return root


def _export(world: Path, day: date, fmt: str, *extra: str) -> list[str]:
    result = CliRunner().invoke(cli, ["export", "--date", day.isoformat(), "--format", fmt,
                                      "--output-dir", str(world / "out"), *extra])
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if line]


def test_ocsf_export_of_the_scored_days_validates_against_ocsf_1_5(world: Path) -> None:
    schema = json.loads((FIXTURES / "ocsf-1.5.0" / "detection_finding.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    findings = [json.loads(line) for day in DAYS for line in _export(world, day, "ocsf")]
    kinds = {f["unmapped"]["uba"]["alert_type"] for f in findings}
    assert len(findings) > 100 and kinds == {"event", "user_day", "risk"}
    errors = [f"{f['finding_info']['uid']}: {e.message}" for f in findings for e in validator.iter_errors(f)]
    assert errors == []
    assert validator.is_valid({**findings[0], "class_uid": 2003}) is False, "the schema is really checked"
    assert validator.is_valid({**findings[0], "actor": {"user": {"uid": "u"}}}) is False, "actor needs the host profile"
    assert {f["metadata"]["version"] for f in findings} == {"1.5.0"}
    assert len({f["finding_info"]["uid"] for f in findings}) == len(findings)


def test_ocsf_findings_carry_the_recommended_alert_attributes(world: Path) -> None:
    """``is_alert`` and ``observables`` are recommended by Detection Finding 1.5.0, and a risk
    finding's score fits its ``risk_score`` / ``risk_level_id``. The vendored schema once
    refused ``is_alert`` and the risk attributes: its build ignored OCSF's ``"profile": null``
    (which makes an attribute of a profile the class's own), so the first mapping left them
    out as "not in 1.5" (scripts/vendor_alert_schemas.py)."""
    findings = [json.loads(line) for day in DAYS for line in _export(world, day, "ocsf")]
    plain = {r["alert_id"]: r for day in DAYS for r in map(json.loads, _export(world, day, "jsonl"))}
    assert findings and all(f["is_alert"] is True for f in findings)
    for f in findings:
        record = plain[f["finding_info"]["uid"]]
        assert f["observables"] == [
            {"name": "evidences.user.uid", "type_id": 31, "type": "User Object: uid", "value": record["user_id"]},
            {"name": "evidences.user.name", "type_id": 4, "type": "User Name", "value": record["user_id"]}]
        assert f["evidences"][0]["user"]["uid"] == record["user_id"] == f["evidences"][0]["user"]["name"]
    risk = [f for f in findings if f["unmapped"]["uba"]["alert_type"] == "risk"]
    assert risk and all(f["risk_score"] == round(f["unmapped"]["uba"]["score"]) for f in risk)
    assert all(f["risk_level"] == f["severity"] and f["risk_level_id"] == f["severity_id"] - 1 for f in risk)
    assert not any("risk_score" in f for f in findings if f not in risk)


CUSTOM_NAMESPACE = "uba"


def _ecs_errors(doc: dict[str, Any], fields: dict[str, Any], prefix: str = "") -> list[str]:
    """ECS 9.2.0 field definitions: every leaf a known field of the right type; arrays where
    ECS says so; categorisation values from ECS's allowed lists; labels.* keyword values."""
    errors: list[str] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name == CUSTOM_NAMESPACE:  # our own fields: a top-level name no ECS field starts with
            errors += [f"{name} is an ECS field set" for f in fields if f.split(".")[0] == name]
            continue
        if name == "labels":
            errors += [f"labels.{k} is not a keyword" for k, v in value.items() if not isinstance(v, str)]
            continue
        if isinstance(value, dict):
            errors += _ecs_errors(value, fields, name + ".")
            continue
        field = fields.get(name)
        if field is None:
            errors.append(f"{name} is not an ECS field")
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not field["array"] and field["type"] not in ("keyword", "text", "wildcard"):
            errors.append(f"{name} is not an array field")
        checks = {"keyword": str, "match_only_text": str, "text": str, "wildcard": str, "constant_keyword": str,
                  "long": int, "float": (int, float), "scaled_float": (int, float), "date": str}
        expected = checks.get(field["type"])
        if expected is None:
            errors.append(f"{name}: unchecked ECS type {field['type']}")
        errors += [f"{name}={v!r} is not {field['type']}" for v in values
                   if expected is not None and (not isinstance(v, expected) or isinstance(v, bool))]
        if field["type"] == "date":
            for v in values:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
        errors += [f"{name}={v!r} is not an allowed value" for v in values
                   if "allowed" in field and v not in field["allowed"]]
    return errors


def test_ecs_export_of_the_scored_days_uses_only_ecs_9_2_fields(world: Path) -> None:
    fields = json.loads((FIXTURES / "ecs-9.2.0" / "ecs_fields.json").read_text())
    docs = [json.loads(line) for day in DAYS for line in _export(world, day, "ecs")]
    assert len(docs) > 100
    assert [e for d in docs for e in _ecs_errors(d, fields)] == []
    assert _ecs_errors({"event": {"kind": "finding"}, "user": {"shoe_size": 3}}, fields) == [
        "event.kind='finding' is not an allowed value", "user.shoe_size is not an ECS field"]
    assert {d["event"]["id"] for d in docs} == {json.loads(x)["finding_info"]["uid"]
                                                for day in DAYS for x in _export(world, day, "ocsf")}


def test_ocsf_and_ecs_exports_lose_nothing_of_the_canonical_record(world: Path) -> None:
    """Each field of the canonical record can be read back from both formats. ECS lost two:
    ``labels.uba_threshold`` had 6 decimals (a score just over its cut read as under it),
    and ``event.reason`` joins the reasons with ``; ``, which the sentences contain
    ("... (41 min); it had 8, ..."): the list is now also in ``uba.reasons``."""
    for day in DAYS:
        plain = [json.loads(line) for line in _export(world, day, "jsonl")]
        ocsf = {f["finding_info"]["uid"]: f for f in map(json.loads, _export(world, day, "ocsf"))}
        ecs = {d["event"]["id"]: d for d in map(json.loads, _export(world, day, "ecs"))}
        assert len(plain) == len(ocsf) == len(ecs) > 0
        for r in plain:
            o, e = ocsf[r["alert_id"]], ecs[r["alert_id"]]
            time_us = (datetime.fromisoformat(r["time"].replace("Z", "+00:00")) - datetime(1970, 1, 1, tzinfo=UTC))
            assert o["time"] == time_us // timedelta(milliseconds=1) and e["@timestamp"] == r["time"]
            anomalies = o["anomaly_analyses"][0]["anomalies"]
            if r["reasons"]:
                assert [a["observations"][0]["value"] for a in anomalies] == r["reasons"]
                assert [a["observation_parameter"] for a in anomalies] == r["reason_kinds"]
            assert e["uba"]["reasons"] == r["reasons"] and e["tags"] == r["reason_kinds"]
            u = o["unmapped"]["uba"]
            assert (u["score"], u["threshold"], u["event_id"], u["event_date"]) == (
                r["score"], r["threshold"], r["event_id"], r["event_date"])
            assert e["event"]["risk_score"] == r["score"] and e["labels"]["uba_event_date"] == r["event_date"]
            assert float(e["labels"]["uba_threshold"]) == r["threshold"]
            assert e["labels"].get("uba_event_id") == r["event_id"] == o["evidences"][0].get("uid")
            assert (o["metadata"]["correlation_uid"], e["labels"]["uba_run_id"]) == (r["run_id"], r["run_id"])
            assert o["metadata"]["log_name"] == e["event"]["reference"] == r["run_ref"]
            assert o["finding_info"]["analytic"]["version"] == e["rule"]["version"] == r["model_version"]
            assert e["event"]["code"] == r["alert_type"] and o["severity"].lower() == r["severity"]
    assert any("; " in reason for day in DAYS for r in map(json.loads, _export(world, day, "jsonl"))
               for reason in r["reasons"]), "the world has a reason that holds the old separator"


def test_alert_ids_are_what_was_detected_and_survive_re_scoring(world: Path, tmp_path: Path) -> None:
    day = DAYS[2]
    before = [json.loads(line) for line in _export(world, day, "jsonl")]
    for record in before:
        subject = ([record["event_id"]] if record["alert_type"] == "event"
                   else [record["user_id"], day.isoformat()] if record["alert_type"] == "user_day"
                   else [record["user_id"], day.isoformat(), record["severity"]])
        assert record["alert_id"] == alert_id(record["alert_type"], *subject)
    models = tmp_path / "models2"  # another model: a different version and forest seed
    trained = CliRunner().invoke(cli, ["train", "--data-dir", str(world / "data"), "--model-dir", str(models),
                                       "--end-date", (TRAIN_END - timedelta(days=1)).isoformat(),
                                       "--window-days", str((TRAIN_END - START).days)],
                                 env={"UBA_THRESHOLD__PERCENTILE": "80"})  # the world's cut: comparable alerts
    assert trained.exit_code == 0, trained.output
    _cli("score", "--date", day.isoformat(), "--data-dir", str(world / "data"), "--model-dir", str(models),
         "--output-dir", str(world / "out"), "--in-process")
    after = [json.loads(line) for line in _export(world, day, "jsonl")]
    assert {r["model_version"] for r in after} != {r["model_version"] for r in before}
    def key(r: dict[str, Any]) -> tuple[str, str, str]:  # a risk finding is also about its level
        return r["alert_type"], r["event_id"] or r["user_id"], r["severity"] if r["alert_type"] == "risk" else ""

    by_subject = {key(r): r["alert_id"] for r in before}
    both = [r for r in after if key(r) in by_subject]
    assert len(both) > 10
    assert all(by_subject[key(r)] == r["alert_id"] for r in both)


def test_every_record_carries_the_contracted_fields(world: Path) -> None:
    records = [json.loads(line) for line in _export(world, DAYS[0], "jsonl")]
    assert records and all(set(r) == set(RECORD_SCHEMA) for r in records)
    for r in records:
        assert r["user_id"] and r["time"].endswith("Z") and r["score"] is not None and r["threshold"] is not None
        # an alert is phrased: [] only when no feature stands out (the world's 80th-percentile cut flags some)
        assert r["reasons"] is not None and len(r["reasons"]) == len(r["reason_kinds"]) and r["model_version"]
        assert r["run_ref"] == f"runs/event_date={DAYS[0]}/manifest.json#run={r['run_id']}"
    assert all(r["reasons"] for r in records if r["alert_type"] != "event")
    assert sum(bool(r["reasons"]) for r in records) > len(records) / 2
    events = [r for r in records if r["alert_type"] == "event"]
    assert all(r["score"] >= r["threshold"] for r in events)
    flagged = pl.read_parquet(next((world / "out").glob(f"flagged/event_date={DAYS[0]}/*.parquet")))
    unsuppressed = flagged.filter(pl.col("is_anomaly") & ~pl.col("suppressed"))
    assert sorted(r["event_id"] for r in events) == sorted(unsuppressed["event_id"].to_list())


def test_csv_export_quotes_formulas_and_has_a_header_when_empty(world: Path, tmp_path: Path) -> None:
    lines = _export(world, DAYS[0], "csv")
    rows = list(csv.DictReader(stdio.StringIO("\n".join(lines))))
    assert rows and list(rows[0]) == list(RECORD_SCHEMA)
    hostile = {"alert_id": "uba-x", "alert_type": "event", "user_id": "=HYPERLINK(\"http://x\")",
               "time": datetime(2026, 3, 2, tzinfo=UTC), "event_date": date(2026, 3, 2), "event_id": "@SUM(1)",
               "score": 0.7, "threshold": 0.6, "severity": "medium", "reasons": ["-2+3"], "reason_kinds": ["hour"],
               "model_version": "v", "run_id": "r", "run_ref": "runs/x"}
    row = next(csv.DictReader(stdio.StringIO("".join(render([hostile], "csv")))))
    assert row["user_id"] == "'=HYPERLINK(\"http://x\")" and row["event_id"] == "'@SUM(1)"
    assert row["reasons"] == "'-2+3"
    assert "".join(render([], "csv")) == ",".join(RECORD_SCHEMA) + "\n"


def test_export_errors_are_one_line(world: Path, tmp_path: Path) -> None:
    out = str(world / "out")
    never = CliRunner().invoke(cli, ["export", "--date", "2020-01-01", "--output-dir", out])
    assert never.exit_code == 1 and "2020-01-01 is not scored" in never.output
    risk = CliRunner().invoke(cli, ["export", "--date", DAYS[0].isoformat(), "--what", "risk", "--output-dir", out])
    assert risk.exit_code == 0, risk.output  # every score run computes entity risk now (tests/test_risk_cli.py)
    target = tmp_path / "a.ocsf.jsonl"
    written = CliRunner().invoke(cli, ["export", "--date", DAYS[0].isoformat(), "--out", str(target),
                                       "--output-dir", out])
    assert written.exit_code == 0 and target.read_text().count("\n") == len(_export(world, DAYS[0], "ocsf"))
    blocked = CliRunner().invoke(cli, ["export", "--date", DAYS[0].isoformat(), "--out", str(target / "x"),
                                       "--output-dir", out])
    assert blocked.exit_code == 1 and f"cannot write {target / 'x'}" in blocked.output
    assert "Traceback" not in never.output + risk.output + blocked.output
