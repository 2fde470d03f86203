"""Alert delivery through a real rsyslog (Debian's rsyslogd, started and stopped by the test
on 127.0.0.1): one well-formed RFC 5424 line per alert, whose CEF or JSON payload parses
back to the exported record."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from waiting import wait_until

from jobs.cli import cli
from uba.alerting.payloads import CEF_SEVERITY

RSYSLOGD = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(RSYSLOGD is None,
                                reason="rsyslog is needed: rsyslogd not found (.ci/run installs rsyslog with apt-get)")

LINE = re.compile(r'^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) '
                  r'(?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) '
                  r'(?P<sd>\[uba@32473(?: [a-z_]+="(?:[^"\\\]]|\\.)*")+\]) (?P<msg>.+)$')
SD_PARAM = re.compile(r'([a-z_]+)="((?:[^"\\\]]|\\.)*)"')


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """rsyslogd in the foreground with its own config, work dir and pid file: imtcp on a
    free loopback port, every message's raw text to one file. Stopped by its PID."""
    log_file, work, port_file = tmp_path / "syslog.log", tmp_path / "rsyslog-work", tmp_path / "rsyslog.port"
    work.mkdir()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'''global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="uba") {{ action(type="omfile" file="{log_file}" template="raw") }}
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}" ruleset="uba")
''')
    process = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def bound_port() -> int | None:
            """rsyslogd binds port 0 itself and writes the port it got (imtcp listenPortFileName)."""
            if process.poll() is not None:
                raise AssertionError(f"rsyslogd exited: {process.communicate()[0]}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            return int(text) if text else None

        port = wait_until(bound_port, 15, "rsyslogd to write its imtcp port")
        wait_until(lambda: _accepts(port), 15, f"rsyslogd to accept on 127.0.0.1:{port}")
        yield port, log_file
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """A CEF:0 event: the 7 header fields (unescaped) and the extension (unescaped values)."""
    header, field, i = [], "", 0
    while len(header) < 7:
        char = text[i]
        if char == "\\" and text[i + 1] in "\\|":
            field += text[i + 1]
            i += 2
            continue
        if char == "|":
            header.append(field)
            field = ""
        else:
            field += char
        i += 1
    extension: dict[str, str] = {}
    for token in re.split(r" (?=[A-Za-z0-9_]+=)", text[i:]):
        key, _, value = token.partition("=")
        extension[key] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), value)
    return header, extension


def cef_as_record(header: list[str], ext: dict[str, str]) -> dict[str, Any]:
    """The canonical record's fields as the CEF event carries them (lists joined by ' | ')."""
    labels = {ext[k]: ext[k.removesuffix("Label")] for k in ext if k.endswith("Label")}
    severity = {v: k for k, v in CEF_SEVERITY.items()}[int(header[6])]
    return {"alert_id": ext["externalId"], "alert_type": ext["cat"], "user_id": ext["suser"],
            "severity": severity, "reasons": ext["msg"], "reason_kinds": labels.get("reasonKinds", ""),
            "score": float(labels["score"]), "threshold": float(labels["threshold"]) if "threshold" in labels else None,
            "model_version": labels.get("modelVersion"), "run_ref": labels["runRef"], "run_id": labels["runId"],
            "event_id": labels.get("eventId"), "event_date": labels["eventDate"], "rt": int(ext["rt"])}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args[:3], result.output)
    return result.output


def test_rsyslog_receives_one_rfc5424_line_per_alert_with_cef_and_json_payloads(
        alert_world, tmp_path: Path, rsyslog: tuple[int, Path]) -> None:
    port, log_file = rsyslog
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(alert_world.data_dir, data, symlinks=True)
    day = alert_world.score_dates[2]
    dirs = ["--data-dir", str(data), "--output-dir", str(out)]
    _cli("score", "--date", day.isoformat(), *dirs, "--model-dir", str(alert_world.model_dir), "--in-process")
    config = tmp_path / "syslog.yaml"
    sink = {"type": "syslog", "host": "127.0.0.1", "port": port, "batch_size": 25, "timeout_sec": 5}
    config.write_text(yaml.safe_dump({"alerting": {"sinks": [
        {**sink, "name": "rsyslog-cef", "payload": "cef", "app_name": "uba-cef"},
        {**sink, "name": "rsyslog-json", "payload": "json", "app_name": "uba-json"}]}}))
    # the day was scored before the sinks existed: not sent unless asked for with --date
    assert "0 delivered" in _cli("--config", str(config), "alerts", "deliver", *dirs)
    sent = _cli("--config", str(config), "alerts", "deliver", "--date", day.isoformat(), *dirs)
    records = [json.loads(line) for line in _cli("export", "--date", day.isoformat(), "--format", "jsonl",
                                                 "--output-dir", str(out)).splitlines() if line]
    assert len(records) > 20 and f"rsyslog-cef: {len(records)} delivered" in sent, sent

    def written() -> int:
        return log_file.read_text().count("\n") if log_file.exists() else 0

    # omfile writes asynchronously to our send
    wait_until(lambda: written() >= 2 * len(records), 10, f"rsyslogd to write {2 * len(records)} lines")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2 * len(records)
    by_app: dict[str, list[re.Match[str]]] = {"uba-cef": [], "uba-json": []}
    for line in lines:
        match = LINE.match(line)
        assert match, line
        by_app[match["app"]].append(match)
    expected = {r["alert_id"]: r for r in records}
    for app, matches in by_app.items():
        assert [dict(SD_PARAM.findall(m["sd"]))["alert_id"] for m in matches] == list(expected), app
        for m in matches:
            record = expected[dict(SD_PARAM.findall(m["sd"]))["alert_id"]]
            assert datetime.fromisoformat(m["ts"].replace("Z", "+00:00")) == datetime.fromisoformat(
                record["time"].replace("Z", "+00:00"))
            assert int(m["pri"]) // 8 == 10 and m["msgid"] == record["alert_type"].upper()
            if app == "uba-json":
                assert json.loads(m["msg"]) == record
                continue
            header, ext = parse_cef(m["msg"])
            assert header[:5] == ["CEF:0", "UBA", "UBA", header[3], record["alert_type"]]
            parsed = cef_as_record(header, ext)
            assert parsed.pop("rt") == int(datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
                                           .astimezone(UTC).timestamp() * 1000)
            want = {k: record[k] for k in parsed}
            want["reasons"], want["reason_kinds"] = " | ".join(record["reasons"]), " | ".join(record["reason_kinds"])
            assert parsed == want
