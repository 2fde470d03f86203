"""Operating the detector end to end on generated data.

One world for the module: 120 generated users over 18 days (one naturally erratic
user, two planted exfiltration days, sessions 3x longer from the last day on), a
model trained with the real `train` on days 8-14 (7-day lookback, so baselines are
mature), and days 15-18 scored by the real `score --date` path on Ray with per-user
thresholds on. Seed 6 is one where the erratic user is a visible source of global-threshold
alerts (a precondition the test checks, so a generator or model change cannot make it vacuous).

Not on conftest's shared world: it needs its own anomaly mix (the erratic user, planted
exfiltration days, the shifted last day), a 7-day lookback and per-user thresholds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import _chromium
import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.alerting.feedback import add_rule, known_reason_kinds, remove_rule
from uba.alerting.userday import stored_day_alerts
from uba.features import protected_baselines_as_of
from uba.generate import CONTEXTUAL_KINDS
from uba.report import load_report_data
from uba.scoring.driver import ScoreOptions, score_day
from uba.settings import Settings, load_settings
from uba.training import train_model

START = date(2026, 3, 2)                       # a Monday
TRAIN_END = START + timedelta(days=13)         # Sunday 2026-03-15
SCORED = tuple(START + timedelta(days=d) for d in range(14, 18))
SHIFTED = SCORED[-1]                           # Thursday 2026-03-19: sessions 3x longer
ORDINARY = SCORED[:-1]
SEED = 6


@dataclass(frozen=True)
class World:
    root: Path
    settings: Settings
    erratic_user: str
    labels: pl.DataFrame


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args[0], result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ray_runtime: None) -> World:
    root = tmp_path_factory.mktemp("operations")
    data = root / "data"
    _cli("generate", "--out", str(data), "--users", "120", "--days", "18", "--start", START.isoformat(),
         "--seed", str(SEED), "--erratic-users", "1", "--user-day-anomalies", "2",
         "--shift-from", SHIFTED.isoformat())
    settings = load_settings(env={}, overrides={
        "paths": {"data_dir": data, "model_dir": root / "models", "output_dir": root / "out"},
        "features": {"lookback_days": 7},
        "model": {"n_estimators": 100},
        "user_thresholds": {"enabled": True},
    })
    train_model(settings, TRAIN_END, window_days=7)
    for day in SCORED:
        score_day(settings, ScoreOptions(day=day))
    users = pl.read_parquet(data / io.LABELS / "users.parquet")
    erratic = users.filter(pl.col("is_erratic"))["user_id"].to_list()
    assert len(erratic) == 1
    labels = pl.read_parquet(data / io.LABELS / "labels.parquet")
    return World(root, settings, erratic[0], labels)


def _scores(world: World, days: tuple[date, ...]) -> pl.DataFrame:
    files = [f for d in days for f in io.partition_files(world.settings.paths.output_dir, io.SCORES, d)]
    return pl.read_parquet(files).join(world.labels.select("event_id", "kind"), on="event_id", how="left")


def test_per_user_thresholds_damp_the_erratic_user_and_keep_recall(world: World) -> None:
    scores = _scores(world, ORDINARY)
    glob = scores.with_columns(flag=pl.col("anomaly_score") >= pl.col("threshold"))
    mine = scores.with_columns(flag=pl.col("is_anomaly"))

    def share(frame: pl.DataFrame) -> float:
        return frame.filter(pl.col("user_id") == world.erratic_user)["flag"].sum() / max(frame["flag"].sum(), 1)

    def recall(frame: pl.DataFrame) -> float:
        return frame.filter(pl.col("kind").is_in(CONTEXTUAL_KINDS))["flag"].mean()

    # precondition: under the global threshold the erratic user is a real source of noise
    assert glob.filter(pl.col("user_id") == world.erratic_user)["flag"].sum() >= 5
    assert share(glob) >= 0.1
    assert share(mine) <= share(glob) / 2
    # recall is kept within 0.1 for the users the cut is meant to judge by their habits:
    # those whose training days held no planted anomaly. A user attacked during training
    # has their own anomalies at the top of their training scores, so their 0.9 quantile
    # and cut rise (thresholds.py) and later anomalies of theirs can sit under it. Here
    # two such users (u00107: 19 of 64 training events anomalous, u00029: 8 of 45) have
    # cuts of 1.2x and 1.15x the global one, as before uba-features-7; since then the
    # global cut catches every scored session (recall 0.611 -> 1.000) and the per-user
    # cuts 25 of the 36 events (0.528 -> 0.694): all but those two users' sessions. The
    # scored days hold only 36 contextual events (6 sessions); on evaluate's 500-user
    # worlds per-user thresholds moved recall by -0.084 to -0.015 (docs/evaluation.md, run 4).
    attacked = world.labels.filter(pl.col("is_anomaly") & (pl.col("event_date") <= TRAIN_END))["user_id"].unique()
    clean = ~pl.col("user_id").is_in(attacked.implode())
    assert recall(mine.filter(clean)) >= recall(glob.filter(clean)) - 0.1
    assert recall(mine) >= 0.6  # 0.694 here (25 of 36 events)
    erratic_cut = scores.filter(pl.col("user_id") == world.erratic_user)["user_threshold"].unique()
    assert erratic_cut.len() == 1 and erratic_cut.item() > scores["threshold"][0]
    for day in ORDINARY:  # the manifest shows the distribution both ways
        alerts = io.read_run_manifest(world.settings.paths.output_dir, day)["alerts"]
        conc = alerts["concentration"]
        assert alerts["per_user_thresholds"] is True
        assert conc["global_threshold"]["alerts"] == alerts["flagged_rows_global_threshold"]
        assert conc["per_user_thresholds"]["alerts"] == alerts["flagged_rows"]


def test_shifted_day_drifts_and_ordinary_days_do_not(world: World, tmp_path: Path) -> None:
    out = world.settings.paths.output_dir
    shifted = io.read_run_manifest(out, SHIFTED)["drift"]
    assert shifted["status"] == "drift" and shifted["retrain_advised"]
    assert shifted["score_psi"] >= world.settings.monitoring.psi_drift
    # sessions 3x longer with as many actions: long for the user, and long for their activity
    assert shifted["max_feature"] in {"session_length_excess", "log_session_duration", "length_for_actions_excess"}
    assert shifted["max_feature_psi"] > world.settings.monitoring.psi_drift
    assert shifted["score_psi_excess"] >= world.settings.monitoring.psi_drift  # the verdict judges the excess
    assert shifted["max_feature_psi_excess"] >= world.settings.monitoring.psi_drift
    for day in ORDINARY:
        drift = io.read_run_manifest(out, day)["drift"]
        assert drift["status"] != "drift" and not drift["retrain_advised"], (day, drift)
        assert drift["reference"].startswith("training window (cross-fitted scores, 7 days"), \
            "one training day per weekday is too few: the pooled cross-fitted reference"
        assert drift["judged_by"] == "excess" and drift["chance"]["users"] > 0
    png = tmp_path / "monitor.png"
    printed = _cli("monitor", "--start", SCORED[0].isoformat(), "--end", SHIFTED.isoformat(),
                   "--output-dir", str(out), "--png", str(png))
    assert f"retraining advised: 1 of 4 days drifted (first {SHIFTED}" in printed
    assert printed.splitlines()[0].split()[5:7] == ["featxs", "scorexs"]
    assert "xs = excess PSI over what chance gives" in printed
    assert png.stat().st_size > 1000


def test_suppression_silences_exactly_the_matching_alerts(world: World) -> None:
    out = world.settings.paths.output_dir

    def alerts_of(day: date) -> pl.DataFrame:
        scored = pl.read_parquet(io.partition_files(out, io.SCORES, day))
        return scored.filter(pl.col("is_anomaly") & (pl.col("reason_kinds").list.len() > 0))

    # the first ordinary day with an explained alert (a day may have none with per-user thresholds)
    day = next(d for d in ORDINARY if alerts_of(d).height)
    before = pl.read_parquet(io.partition_files(out, io.SCORES, day))
    alerts = alerts_of(day)
    target = alerts.row(0, named=True)
    user, kind = target["user_id"], target["reason_kinds"][0]
    rule = add_rule(world.settings.paths.data_dir, user, kind, known_reason_kinds(), note="e2e")
    try:
        manifest = score_day(world.settings, ScoreOptions(day=day))
    finally:
        remove_rule(world.settings.paths.data_dir, rule)
    after = pl.read_parquet(io.partition_files(out, io.SCORES, day))
    expected = (pl.col("is_anomaly") & (pl.col("user_id") == user)
                & (pl.col("reason_kinds").list.first() == kind)).fill_null(False)
    assert after.select("event_id", "anomaly_score", "is_anomaly").equals(
        before.select("event_id", "anomaly_score", "is_anomaly")), "still scored, same decisions"
    assert after["suppressed"].to_list() == after.select(expected).to_series().to_list()
    silenced = after.filter(pl.col("suppressed"))
    assert silenced.height >= 1 and set(silenced["suppressed_by"]) == {rule}
    assert not before["suppressed"].any()
    flagged = pl.read_parquet(io.partition_files(out, io.FLAGGED, day))
    assert flagged.filter(pl.col("suppressed")).height == silenced.height, "flagged/ shows them, marked"
    counts = manifest["alerts"]
    assert counts["suppressed_rows"] == silenced.height
    assert counts["alert_rows"] == counts["flagged_rows"] - silenced.height


def test_exfiltration_days_are_flagged_at_the_user_day_level(world: World) -> None:
    planted = (world.labels.filter(pl.col("kind") == "exfiltration_day")
               .select("user_id", "event_date").unique().sort("event_date"))
    assert planted.height == 2
    for user, day in planted.iter_rows():
        if day in SCORED:
            alerts = pl.read_parquet(io.partition_files(world.settings.paths.output_dir, io.FLAGGED_USERS, day))
        else:  # planted inside the training window: score's user-day pass on that day's baselines
            baselines = protected_baselines_as_of(world.settings.paths.data_dir, day, world.settings,
                                                  world.settings.paths.output_dir)
            alerts, _ = stored_day_alerts(world.settings, day, baselines)
        row = alerts.filter(pl.col("user_id") == user)
        assert row.height == 1, (user, day, alerts)
        assert "spread_downloads" in row["reason_kinds"].item()
        assert any("possible data exfiltration" in r for r in row["reasons"].item())
        assert alerts.height <= 3, "a user-day alert is rare"
    for day in SCORED:
        manifest = io.read_run_manifest(world.settings.paths.output_dir, day)
        stored = io.partition_files(world.settings.paths.output_dir, io.FLAGGED_USERS, day)
        assert manifest["user_day"]["flagged_users"] == pl.read_parquet(stored).height


def test_feedback_drops_confirmed_malicious_events_from_training(world: World, tmp_path: Path) -> None:
    flagged = pl.read_parquet(io.partition_files(world.settings.paths.output_dir, io.FLAGGED, ORDINARY[0]))
    csv = tmp_path / "labels.csv"
    pl.DataFrame({"event_id": flagged["event_id"].head(3), "label": ["malicious", "malicious", "benign"]}
                 ).write_csv(csv)
    data = str(world.settings.paths.data_dir)
    assert "2 malicious" in _cli("feedback", str(csv), "--data-dir", data)
    printed = CliRunner().invoke(cli, ["train", "--data-dir", data, "--end-date", ORDINARY[0].isoformat(),
                                       "--window-days", "2", "--min-days", "2", "--model-dir", str(tmp_path / "m"),
                                       "--exclude-malicious"],
                                 env={"UBA_FEATURES__LOOKBACK_DAYS": "7", "UBA_MODEL__N_ESTIMATORS": "20"})
    assert printed.exit_code == 0, printed.output
    assert "excluded 2 confirmed-malicious events from training" in printed.output


@pytest.mark.skipif(not _chromium.available(), reason="chromium not installed (.ci/run installs it)")
def test_daily_report_renders_in_headless_chromium(world: World, tmp_path: Path) -> None:
    import os

    out = world.settings.paths.output_dir
    page = tmp_path / "report.html"
    _cli("report", "--date", SHIFTED.isoformat(), "--output-dir", str(out), "--out", str(page))
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html), "no external assets"
    assert "<script" not in html
    rendered = _chromium.render(page, tmp_path)
    assert rendered.console == [], rendered.console
    expected = load_report_data(world.settings, SHIFTED).top_users["user_id"].head(5).to_list()
    assert expected, "the shifted day has alerts"
    for user in expected:
        assert f'data-user="{user}"' in rendered.dom
    assert 'id="retrain"' in rendered.dom and "Retraining advised" in rendered.dom
    assert io.read_run_manifest(out, SHIFTED)["model"]["version"] in rendered.dom
    target = os.environ.get("UBA_REPORT_SCREENSHOT")  # set to refresh docs/report-screenshot.png
    if target:
        short = tmp_path / "short.html"
        _cli("report", "--date", SHIFTED.isoformat(), "--output-dir", str(out), "--out", str(short), "--top", "5")
        _chromium.screenshot(short, tmp_path, Path(target), width=1000, height=1900)


def test_score_command_reports_drift_and_fails_only_when_configured(world: World) -> None:
    s = world.settings
    args = ["score", "--date", SHIFTED.isoformat(), "--data-dir", str(s.paths.data_dir),
            "--model-dir", str(s.paths.model_dir), "--output-dir", str(s.paths.output_dir)]
    env = {"UBA_FEATURES__LOOKBACK_DAYS": "7", "UBA_USER_THRESHOLDS__ENABLED": "true"}
    relaxed = CliRunner().invoke(cli, args, env=env)
    assert relaxed.exit_code == 0, relaxed.output
    assert "drift: drift" in relaxed.output and "retraining advised" in relaxed.output
    strict = CliRunner().invoke(cli, args, env={**env, "UBA_MONITORING__FAIL_ON_DRIFT": "true"})
    assert strict.exit_code == 3, strict.output
    assert "monitoring.fail_on_drift" in strict.output
    assert io.read_run_manifest(s.paths.output_dir, SHIFTED)["status"] == "succeeded", "outputs still published"


def test_evaluate_shows_alerts_with_and_without_per_user_thresholds(world: World, tmp_path: Path) -> None:
    import json

    s = world.settings
    printed = CliRunner().invoke(cli, [
        "evaluate", "--data-dir", str(s.paths.data_dir), "--model-dir", str(s.paths.model_dir),
        "--start", ORDINARY[0].isoformat(), "--end", ORDINARY[-1].isoformat(), "--out", str(tmp_path)],
        env={"UBA_FEATURES__LOOKBACK_DAYS": "7", "UBA_MODEL__N_ESTIMATORS": "50"})
    assert printed.exit_code == 0, printed.output
    assert "with per-user thresholds: alert rate" in printed.output
    full = json.loads((tmp_path / "evaluation.json").read_text())
    report = full["per_user_thresholds"]
    both = report["alert_concentration"]
    without = {k: v for k, v in both["global_threshold"].items() if k != "alerts"}
    assert without == full["alert_concentration"], "same numbers as evaluate's own concentration"
    assert both["global_threshold"]["alerts"] == full["models"]["uba_user_baseline_iforest"]["flagged"]
    assert report["metrics"]["flagged"] == both["per_user_thresholds"]["alerts"]
    assert report["users_with_own_threshold"] > 100
    assert set(report["metrics"]["recall_by_kind"]) >= set(CONTEXTUAL_KINDS) & set(
        full["models"]["uba_user_baseline_iforest"]["recall_by_kind"])
