"""The daily report: ranking, a self-contained page, and the Chromium check itself
(the report of a generated, really scored day is rendered in test_operations_e2e.py)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import _chromium
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.report import load_report_data, render_report, user_risk_table, write_report
from uba.settings import load_settings

DAY = date(2026, 3, 20)
EVIL = '<script>alert("x")</script>'
needs_chromium = pytest.mark.skipif(not _chromium.available(), reason="chromium not installed (.ci/run installs it)")


def _flagged() -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": ["a", "b", "c", "d", "e"],
        "user_id": ["u1", "u1", "u2", EVIL, "u4"],
        "timestamp": [datetime(2026, 3, 20, h, tzinfo=UTC) for h in (3, 9, 11, 12, 14)],
        "anomaly_score": [0.9, 0.66, 0.7, 0.8, 0.95],
        "is_anomaly": [True] * 5,
        "threshold": [0.6] * 5,
        "reasons": [["03:00 is outside this user's usual 09:00-17:00"], ["first mobile login"],
                    ["session 9.1x longer"], ["odd"], ["many downloads"]],
        "suppressed": [False, False, False, False, True],
        "suppressed_by": [None, None, None, None, "r1"],
    })


def _user_days() -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["u2", "u9"], "risk_score": [2.5, 1.0],
                         "reasons": [["12 downloads spread over 8 sessions"], ["active on a Saturday"]]})


def test_users_are_ranked_by_combined_risk() -> None:
    top = user_risk_table(_flagged().lazy(), _user_days().lazy(), top=10).collect()
    assert top["user_id"].to_list() == ["u2", "u1", EVIL, "u9"], "u4 only has a suppressed alert"
    u2 = top.row(0, named=True)
    assert u2["risk"] == pytest.approx(0.7 / 0.6 + 2.5, abs=1e-3)
    assert u2["reasons"] == ["12 downloads spread over 8 sessions", "session 9.1x longer"]
    u1 = top.row(1, named=True)
    assert u1["alerts"] == 2 and u1["risk"] == pytest.approx(0.9 / 0.6 + 0.66 / 0.6, abs=1e-3)
    assert user_risk_table(_flagged().lazy(), _user_days().lazy(), top=2).collect().height == 2


def _output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    io.write_part(_flagged(), out, io.FLAGGED, DAY)
    io.write_part(_user_days(), out, io.FLAGGED_USERS, DAY)
    for day, flagged in ((date(2026, 3, 19), 30), (DAY, 5)):
        manifest = {"event_date": day.isoformat(), "run_id": "r-" + day.isoformat(), "status": "succeeded",
                    "model": {"version": "20260318T000000Z-abcdef12", "threshold": 0.6,
                              "threshold_percentile": 98.0},
                    "counts": {"scored_rows": 1000, "flagged_rows": flagged},
                    "alerts": {"flagged_rows": flagged, "suppressed_rows": 1, "alert_rows": flagged - 1}}
        io.write_json_atomic(manifest, io.run_manifest_path(out, day))
    return out


def test_page_is_self_contained_and_escapes_data(tmp_path: Path) -> None:
    settings = load_settings(overrides={"paths": {"output_dir": _output_dir(tmp_path)}}, env={})
    html = render_report(load_report_data(settings, DAY), settings)
    assert not re.search(r"https?://", html), "no external links or assets"
    assert "<script" not in html.replace("&lt;script", ""), "user data must be escaped"
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert html.count("data:image/png;base64,") == 1, "alert history chart embedded"
    assert 'id="top-users"' in html and "20260318T000000Z-abcdef12" in html
    assert "no drift check" in html, "runs without a drift section say so instead of inventing one"


@needs_chromium
def test_chromium_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The console check used on the report can fail: a script error and a blocked
    network load are both seen."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p id="x">hello</p>'
                   '<img src="http://example.invalid/a.png"><script>throw new Error("boom")</script>'
                   "</body></html>")
    rendered = _chromium.render(bad, tmp_path)
    assert 'id="x"' in rendered.dom
    assert any("boom" in line for line in rendered.console), rendered.console


@pytest.mark.deploy
@needs_chromium
def test_report_renders_cleanly_in_chromium(tmp_path: Path) -> None:
    settings = load_settings(overrides={"paths": {"output_dir": _output_dir(tmp_path)}}, env={})
    page = write_report(settings, DAY, tmp_path / "r.html")
    rendered = _chromium.render(page, tmp_path)
    assert rendered.console == []
    assert 'data-user="u2"' in rendered.dom and 'data-user="u9"' in rendered.dom


@needs_chromium
def test_report_fills_a_wide_window_and_names_every_user_day(tmp_path: Path) -> None:
    """At 1,400 px the sections reach the right-hand side (the page stopped at 1,100 px),
    and every user-day alert of the day is listed, not only counted."""
    from PIL import Image

    settings = load_settings(overrides={"paths": {"output_dir": _output_dir(tmp_path)}}, env={})
    page = write_report(settings, DAY, tmp_path / "r.html")
    rendered = _chromium.render(page, tmp_path)
    listed = re.findall(r'<tr class="user-day" data-user="([^"]+)"', rendered.dom)
    assert listed == ["u2", "u9"], listed  # riskiest first
    assert "Unusual user-days (2)" in rendered.dom
    shot = Image.open(_chromium.screenshot(page, tmp_path, tmp_path / "wide.png", width=1400, height=900))
    right = np.asarray(shot.convert("RGB").crop((1180, 120, 1370, 600)))
    white = int((right == 255).all(axis=2).sum())
    assert white > 0.3 * right.shape[0] * right.shape[1], white


def test_report_for_an_unscored_day_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", "--date", "2026-01-01", "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "2026-01-01 has not been scored" in result.output and "Traceback" not in result.output


def test_report_to_an_unwritable_path_is_a_one_line_error(tmp_path: Path) -> None:
    out = _output_dir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["report", "--date", DAY.isoformat(), "--output-dir", str(out),
                                      "--out", str(blocker / "r.html")])
    assert result.exit_code == 1, result.output
    assert f"cannot write the report to {blocker / 'r.html'}" in result.output
    assert "Traceback" not in result.output
