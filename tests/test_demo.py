"""`make demo` and then every command it prints, as a newcomer runs them, in a fresh folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from waiting import documented_port

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.sh"
NEXT_HEADER = "== next: try these from "


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _printed_commands(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(NEXT_HEADER))
    return [line.removeprefix("  ") for line in lines[start + 1:] if line.startswith("  ")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UBA_", "RAY_ADDRESS"))}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_the_demo_then_every_command_it_prints(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(REPO / ".venv")  # as in a clone where make set it up
    demo = subprocess.run(["bash", str(DEMO)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert all((tmp_path / part / ".uba-demo").is_file() for part in ("data", "models", "output"))
    commands = _printed_commands(demo.stdout)
    assert commands[0] == "source .venv/bin/activate"
    for wanted in ("uba-batch report", "uba-batch backfill", "uba-batch monitor", "uba-batch evaluate",
                   "uba-api &", "curl "):
        assert any(c.startswith(wanted) for c in commands), (wanted, commands)
    assert not any("--data-dir" in c or "--model-dir" in c or "--output-dir" in c for c in commands)

    script = "set -e\n" + "\n".join(commands) + "\nstatus=$?\nkill %1\nwait\nexit $status\n"
    with documented_port():
        if not _port_free(8000):
            pytest.skip("port 8000 is taken: the demo's printed uba-api command listens there")
        ran = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert "backfill: 6 scored, 0 skipped, 0 failed of 6 dates" in ran.stdout
    assert "PR-AUC ratio vs naive" in ran.stdout
    answer = json.loads(next(line for line in ran.stdout.splitlines() if line.startswith("{")))
    assert answer["user_id"] == "u00042" and answer["is_anomaly"] is True and answer["reasons"]
    target = os.environ.get("UBA_REPORT_SCREENSHOT")  # set to refresh docs/report-screenshot.png
    if target:
        _screenshot_of_a_demo_day(tmp_path, Path(target))


def _screenshot_of_a_demo_day(demo: Path, target: Path) -> None:
    """docs/report-screenshot.png: a backfilled demo day with user-day alerts, at 1,400 px."""
    import _chromium

    page = demo / "shot.html"
    made = subprocess.run([str(REPO / ".venv" / "bin" / "uba-batch"), "report", "--date", "2026-03-25",
                           "--top", "6", "--out", str(page)], cwd=demo, env=_env(), capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    _chromium.screenshot(page, demo, target, width=1400, height=1400)


def test_the_demo_leaves_folders_it_did_not_make_alone(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.csv").write_text("real data\n")
    refused = subprocess.run(["bash", str(DEMO)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1
    assert "data exists and was not made by the demo" in refused.stderr
    assert (tmp_path / "data" / "mine.csv").read_text() == "real data\n"


def test_what_the_demo_writes_is_git_ignored() -> None:
    paths = ["data/events/x.parquet", "models/LATEST", "output/reports/r.html", "report.html",
             "demo/data/x", "data/.uba-demo"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == paths
