"""Alert delivery end to end: the real CLI, a real webhook receiver on
127.0.0.1 that misbehaves on purpose, the real SQLite ledger; no mocks.

Done-when: after a 3-day backfill of ~300 alerts to a receiver failing 30% of requests with
5xx, timing out on 10% and down for one whole run, then `alerts deliver` until nothing is
pending, the receiver holds exactly the exported alert ids, first arrivals in export order
(so day by day), and the outbox has nothing pending; the same after SIGKILL of `score`
during delivery; a misconfigured sink is a one-line error before scoring; an unreachable
receiver is not an error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from alert_receivers import Behaviour, WebhookReceiver, refusing_port
from click.testing import CliRunner, Result

from jobs.cli import cli
from uba.alerting.ledger import Ledger

UBA = Path(sys.executable).with_name("uba-batch")
SECRET_ENV, SECRET = "UBA_TEST_HOOK_SECRET", "test-secret-1"
OLD_SECRET_ENV, OLD_SECRET = "UBA_TEST_HOOK_SECRET_OLD", "test-secret-0"
SECRETS = {SECRET_ENV: SECRET, OLD_SECRET_ENV: OLD_SECRET}


@dataclass(frozen=True)
class Setup:
    data: Path
    models: Path
    out: Path
    config: Path

    def dirs(self) -> list[str]:
        return ["--data-dir", str(self.data), "--output-dir", str(self.out)]

    def score_dirs(self) -> list[str]:
        return [*self.dirs(), "--model-dir", str(self.models), "--in-process"]


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": "hook", "url": url, "format": "ocsf", "secret_envs": [SECRET_ENV, OLD_SECRET_ENV],
            "batch_size": 10, "timeout_sec": 0.3, "max_attempts": 3, "backoff_base_sec": 0.01,
            "backoff_max_sec": 0.05, **extra}


def make_setup(world: Any, tmp_path: Path, sinks: list[dict[str, Any]], **alerting: Any) -> Setup:
    data = tmp_path / "data"
    shutil.copytree(world.data_dir, data, symlinks=True)  # the ledger lives in the data directory
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"alerting": {"sinks": sinks, **alerting}}))
    return Setup(data, world.model_dir, tmp_path / "out", config)


def run(setup: Setup, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(setup.config), *args], env=SECRETS)


def exported(setup: Setup, days: tuple[date, ...]) -> list[tuple[str, str]]:
    """(alert id, day) of every exported record, in export order."""
    pairs = []
    for day in days:
        result = CliRunner().invoke(cli, ["export", "--date", day.isoformat(), "--format", "jsonl",
                                          "--output-dir", str(setup.out)])
        assert result.exit_code == 0, result.output
        pairs += [(json.loads(line)["alert_id"], day.isoformat()) for line in result.stdout.splitlines() if line]
    return pairs


def first_arrivals(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    seen: set[str] = set()
    firsts = []
    for alert, day in receiver.arrivals:
        if alert not in seen:
            seen.add(alert)
            firsts.append((alert, day))
    return firsts


def counts(setup: Setup) -> dict[str, int]:
    with Ledger.open(setup.data) as ledger:
        return ledger.counts().get("hook", {"pending": 0, "delivered": 0, "failed": 0})


def assert_received_exactly(receiver: WebhookReceiver, expected: list[tuple[str, str]]) -> None:
    """Every exported id, no other, first arrivals in export (so day) order; repeats only
    of the same id (at least once); every request correctly signed."""
    assert receiver.bad_signatures == 0
    assert set(receiver.ids()) == {a for a, _ in expected}
    firsts = first_arrivals(receiver)
    assert firsts == expected
    days = [d for _, d in firsts]
    assert days == sorted(days)


def deliver_until_done(setup: Setup, tries: int = 25) -> int:
    for attempt in range(1, tries + 1):
        result = run(setup, "alerts", "deliver", *setup.dirs())
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 0:
            return attempt
    raise AssertionError(f"still pending after {tries} runs of alerts deliver")


def test_a_flaky_receiver_gets_every_alert_of_a_backfill_once_by_id_in_day_order(alert_world, tmp_path: Path) -> None:
    behaviour = Behaviour(fail_rate=0.3, timeout_rate=0.1, sleep_sec=0.45, seed=3)
    receiver = WebhookReceiver([SECRET.encode()], behaviour)  # the receiver knows only the new secret
    setup = make_setup(alert_world, tmp_path, [webhook(receiver.url, max_attempts=2)], deliver_budget_sec=30)
    try:
        result = run(setup, "backfill", "--start", alert_world.score_dates[0].isoformat(), "--end",
                     alert_world.score_dates[-1].isoformat(), *setup.score_dirs())
        assert result.exit_code == 0, result.output
        expected = exported(setup, alert_world.score_dates)
        # 643 findings over the three days since session length given activity
        # (uba-features-7); 566 with the generator's subtler bursts and long sessions
        # (issue 14), at most 400 before. The bound keeps the deliveries' run time in check
        assert 250 <= len(expected) <= 750, len(expected)
        after_backfill = counts(setup)
        assert after_backfill["pending"] > 0 and after_backfill["delivered"] > 0, after_backfill
        assert sum(after_backfill.values()) == len(expected)

        receiver.down()  # down for one whole run: nothing lost, nothing marked
        arrived = len(receiver.arrivals)
        down = run(setup, "alerts", "deliver", *setup.dirs())
        assert down.exit_code == 2 and "stopped: " in down.output, down.output
        assert counts(setup) == after_backfill and len(receiver.arrivals) == arrived

        receiver.up()
        runs = deliver_until_done(setup)
        assert counts(setup) == {"pending": 0, "delivered": len(expected), "failed": 0}
        assert_received_exactly(receiver, expected)
        assert len(receiver.arrivals) > len(expected), "timeouts after receipt make the sender repeat ids"
        assert runs >= 1
        for day in alert_world.score_dates:  # every day's manifest says what its run enqueued and delivered
            manifest = json.loads((setup.out / "runs" / f"event_date={day}" / "manifest.json").read_text())
            sink = manifest["delivery"]["sinks"]["hook"]
            assert sink["enqueued"] == sum(d == day.isoformat() for _, d in expected)
        listed = run(setup, "alerts", "outbox", "--data-dir", str(setup.data))
        assert "hook" in listed.output and f"{len(expected)}" in listed.output
    finally:
        receiver.down()


def _score_process(setup: Setup, day: date) -> subprocess.Popen[str]:
    env = {**os.environ, **SECRETS}
    return subprocess.Popen([str(UBA), "--config", str(setup.config), "score", "--date", day.isoformat(),
                             *setup.score_dirs()], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_sigkill_of_score_during_delivery_then_a_rerun_loses_nothing(alert_world, tmp_path: Path) -> None:
    behaviour = Behaviour(block_on_request=3)  # records the 3rd batch, then never answers
    receiver = WebhookReceiver([SECRET.encode()], behaviour)
    setup = make_setup(alert_world, tmp_path, [webhook(receiver.url, batch_size=20, timeout_sec=20)])
    day = alert_world.score_dates[0]
    try:
        process = _score_process(setup, day)
        try:
            assert behaviour.blocked.wait(90), "the score run never reached the third batch"
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
        assert process.returncode == -signal.SIGKILL
        behaviour.release.set()
        killed = counts(setup)
        assert killed["delivered"] == 40 and killed["pending"] > 0, killed  # the 3rd batch was not acknowledged

        behaviour.block_on_request = None
        rerun = _score_process(setup, day)
        output, _ = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, output
        expected = exported(setup, (day,))
        assert counts(setup) == {"pending": 0, "delivered": len(expected), "failed": 0}
        assert_received_exactly(receiver, expected)
        ids = receiver.ids()  # batches 1-3 before the kill, then batch 3 again and the rest
        assert len(ids) == len(expected) + 20, "only the unacknowledged batch came twice"
        assert ids[60:80] == ids[40:60] == [a for a, _ in expected[40:60]]
    finally:
        behaviour.release.set()
        receiver.down()


BAD_SINKS = {
    "malformed url": ({"type": "webhook", "name": "hook", "url": "http//127.0.0.1:9/x"}, "alerting.sinks.0.url"),
    "unknown type": ({"type": "kafka", "name": "hook", "url": "http://127.0.0.1:9/x"}, "alerting.sinks.0"),
    "missing secret": ({"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x",
                        "secret_envs": ["UBA_TEST_NEVER_SET_SECRET"]}, "UBA_TEST_NEVER_SET_SECRET is not set"),
    "bad syslog host": ({"type": "syslog", "name": "s", "host": "tcp://x"}, "alerting.sinks.0.host"),
}


@pytest.mark.parametrize("case", BAD_SINKS)
def test_a_misconfigured_sink_is_one_line_before_any_scoring(alert_world, tmp_path: Path, case: str) -> None:
    sink, message = BAD_SINKS[case]
    setup = make_setup(alert_world, tmp_path, [sink])
    for args in (["score", "--date", alert_world.score_dates[0].isoformat(), *setup.score_dirs()],
                 ["backfill", "--start", alert_world.score_dates[0].isoformat(), "--end", alert_world.score_dates[0].isoformat(),
                  *setup.score_dirs()],
                 ["alerts", "deliver", *setup.dirs()]):
        result = run(setup, *args)
        assert result.exit_code == 1, (args[0], result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args[0], lines)
        assert not (setup.out / "scores").exists(), "nothing may be scored with a broken sink"


def test_duplicate_sink_names_are_refused_at_load(alert_world, tmp_path: Path) -> None:
    sink = {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x"}
    setup = make_setup(alert_world, tmp_path, [sink, {**sink, "url": "http://127.0.0.1:10/y"}])
    result = run(setup, "alerts", "deliver", *setup.dirs())
    assert result.exit_code == 1 and "'hook' is used twice" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_unreachable_receiver_leaves_alerts_pending_and_score_succeeds(alert_world, tmp_path: Path) -> None:
    with refusing_port() as port:  # held (bound, never listening) for the whole test
        setup = make_setup(alert_world, tmp_path, [webhook(f"http://127.0.0.1:{port}/nobody-listens", max_attempts=2)])
        day = alert_world.score_dates[1]
        result = run(setup, "score", "--date", day.isoformat(), *setup.score_dirs())
        assert result.exit_code == 0, result.output
        expected = exported(setup, (day,))
        assert counts(setup) == {"pending": len(expected), "delivered": 0, "failed": 0}
        assert "delivery hook: 0 delivered" in result.output and "ConnectionRefusedError" in result.output
        manifest = json.loads((setup.out / "runs" / f"event_date={day}" / "manifest.json").read_text())
        hook = manifest["delivery"]["sinks"]["hook"]
        assert hook["enqueued"] == len(expected) and hook["day"]["pending"] == len(expected) and hook["stopped"]
        monitor = run(setup, "monitor", "--start", day.isoformat(), "--end", day.isoformat(), *setup.dirs(),
                      "--png", str(tmp_path / "m.png"))
        assert monitor.exit_code == 0, monitor.output
        assert f"delivery hook: {len(expected)} pending (oldest {day})" in monitor.output
        pending = run(setup, "alerts", "list", "--pending", "--format", "jsonl", "--data-dir", str(setup.data))
        rows = [json.loads(line) for line in pending.stdout.splitlines()]
        assert [r["alert_id"] for r in rows] == [a for a, _ in expected][:100]
        assert all(r["attempts"] == 2 and "ConnectionRefused" in r["last_error"] for r in rows[:10])
        # re-scoring the day adds nothing and keeps the history (attempts, errors)
        again = run(setup, "score", "--date", day.isoformat(), *setup.score_dirs())
        assert again.exit_code == 0
        assert counts(setup)["pending"] == len(expected)
