"""Drift checks against a real bundle reference (uba.artifacts summaries of a fitted detector);
the generated shifted-day case runs end to end in test_operations_e2e.py."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.artifacts import feature_reference, score_summary
from uba.drift import (
    DriftCounts,
    drift_counts,
    drift_report,
    drift_report_from_counts,
    psi,
    reference_shares_match,
    score_reference,
)
from uba.model import fit_detector
from uba.settings import ModelSettings, MonitoringSettings

NAMES = ("f_session", "f_actions", "f_hour", "f_weekday")
LIMITS = MonitoringSettings(ignore_features=("f_weekday",))


def _sample(rng: np.random.Generator, n: int, session_scale: float = 1.0) -> np.ndarray:
    return np.column_stack([
        np.log1p(rng.lognormal(6.0, 0.5, n) * session_scale),
        rng.normal(2.0, 0.4, n),
        rng.normal(12.0, 3.0, n),
        rng.integers(0, 7, n).astype(float),
    ])


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """What a bundle carries for drift: its own feature and score summaries."""
    rng = np.random.default_rng(7)
    X = _sample(rng, 6000)
    detector, train_scores = fit_detector(X, NAMES, ModelSettings(n_estimators=50), 98.0)
    return {
        "detector": detector,
        "metadata": {
            "feature_names": list(NAMES),
            "threshold": detector.threshold,
            "percentile": 98.0,
            "feature_reference": feature_reference(X, NAMES),
            "score_summary": score_summary(train_scores),
        },
        "train": X,
    }


def test_psi_of_known_shares() -> None:
    assert psi(np.array([25, 25, 50]), [0.25, 0.25, 0.5]) == pytest.approx(0.0, abs=1e-12)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi(np.array([90, 10]), [0.5, 0.5]) == pytest.approx(expected)
    assert np.isfinite(psi(np.array([100, 0]), [0.5, 0.5])), "an empty bin must not make PSI infinite"
    with pytest.raises(ValueError, match="3 bins observed but 2"):
        psi(np.array([1, 2, 3]), [0.5, 0.5])


def test_binning_reproduces_the_bundle_reference(reference: dict[str, Any]) -> None:
    assert reference_shares_match(reference["metadata"], reference["train"])


def test_an_ordinary_day_is_not_drift(reference: dict[str, Any]) -> None:
    X = _sample(np.random.default_rng(99), 1500)
    scores = reference["detector"].anomaly_scores(X)
    report = drift_report(X, scores, reference["metadata"], LIMITS)
    assert report["status"] == "ok", report
    assert not report["retrain_advised"] and report["why"] == []
    assert report["max_feature_psi"] < LIMITS.psi_warn
    assert report["score_psi"] < LIMITS.psi_warn
    assert report["expected_alert_rate"] == pytest.approx(0.02)
    assert 0.005 < report["alert_rate"] < 0.05


def test_sessions_three_times_longer_is_drift_with_reasons(reference: dict[str, Any]) -> None:
    X = _sample(np.random.default_rng(99), 1500, session_scale=3.0)
    report = drift_report(X, reference["detector"].anomaly_scores(X), reference["metadata"], LIMITS)
    assert report["status"] == "drift" and report["retrain_advised"]
    assert report["max_feature"] == "f_session"
    assert report["feature_psi"]["f_session"] > LIMITS.psi_drift
    assert any("f_session" in why or "score" in why for why in report["why"])


def _counts_like_reference(metadata: dict[str, Any], rows: int, moved: dict[str, float],
                           score_moved: float = 0.0) -> DriftCounts:
    """Day counts equal to the training shares, except features in ``moved`` (and the
    score when ``score_moved``) whose given share of mass is pushed into the last bin."""
    def push(shares: np.ndarray, share: float) -> np.ndarray:
        shares = shares * (1 - share)
        shares[-1] += share
        return np.round(shares * rows).astype(np.int64)

    counts = {name: push(np.asarray(ref["proportions"], dtype=float), moved.get(name, 0.0))
              for name, ref in metadata["feature_reference"]["features"].items()}
    score_counts = push(np.asarray(score_reference(metadata)[1], dtype=float), score_moved)
    return DriftCounts(rows=rows, alerts=int(rows * 0.02), feature_counts=counts, score_counts=score_counts)


@pytest.mark.parametrize(("moved", "score_moved", "rows", "status"), [
    ({}, 0.0, 2000, "ok"),
    ({"f_session": 0.6, "f_actions": 0.6}, 0.0, 2000, "warn"),  # inputs moved, model output did not
    ({}, 0.5, 2000, "warn"),                                   # output moved, no input explains it
    ({"f_session": 0.6}, 0.5, 2000, "drift"),                  # both: retrain
    ({"f_weekday": 0.9}, 0.5, 2000, "warn"),                   # ignored calendar feature does not count
    ({"f_session": 0.6}, 0.5, 300, "warn"),                    # too few rows to call drift
])
def test_status_rules(reference: dict[str, Any], moved: dict[str, float], score_moved: float, rows: int,
                      status: str) -> None:
    counts = _counts_like_reference(reference["metadata"], rows, moved, score_moved)
    report = drift_report_from_counts(counts, reference["metadata"], LIMITS)
    assert report["status"] == status, report
    assert report["retrain_advised"] == (status == "drift")
    assert (report["score_psi"] >= LIMITS.psi_drift) == (score_moved > 0)
    if status == "drift":
        assert report["why"][0].startswith("anomaly score PSI") and "f_session" in report["why"][1]
    if "f_weekday" in moved:
        assert report["feature_psi"]["f_weekday"] > LIMITS.psi_drift
        assert report["max_feature"] != "f_weekday" and report["ignored_features"] == ["f_weekday"]
    if rows < LIMITS.min_rows:
        assert any("min_rows" in w for w in report["warnings"])


def test_alert_rate_outside_its_band_warns(reference: dict[str, Any]) -> None:
    counts = _counts_like_reference(reference["metadata"], 2000, {})
    counts.alerts = 200  # 10 % instead of 2 %
    report = drift_report_from_counts(counts, reference["metadata"], LIMITS)
    assert report["status"] == "warn" and not report["retrain_advised"]
    assert report["alert_rate_ratio"] == pytest.approx(5.0)
    assert any("alert rate 0.1000 is 5.00x" in w for w in report["warnings"])


def test_chunked_counts_give_the_same_report(reference: dict[str, Any]) -> None:
    X = _sample(np.random.default_rng(5), 1200, session_scale=1.5)
    scores = reference["detector"].anomaly_scores(X)
    meta = reference["metadata"]
    merged = DriftCounts()
    for part in np.array_split(np.arange(len(X)), 4):
        merged = merged.merge(DriftCounts.from_dict(drift_counts(X[part], scores[part], meta).to_dict()))
    assert drift_report_from_counts(merged, meta, LIMITS) == drift_report(X, scores, meta, LIMITS)


def _write_manifest(output_dir: Path, day: str, report: dict[str, Any], version: str) -> None:
    manifest = {"event_date": day, "status": "succeeded",
                "model": {"version": version, "threshold": 0.6, "threshold_percentile": 98.0},
                "counts": {"scored_rows": report["rows"], "flagged_rows": report["alerts_at_global_threshold"]},
                "drift": report}
    io.write_json_atomic(manifest, io.run_manifest_path(output_dir, date.fromisoformat(day)))


def test_monitor_prints_a_table_writes_a_chart_and_advises(reference: dict[str, Any], tmp_path: Path) -> None:
    meta, det = reference["metadata"], reference["detector"]
    for i, scale in enumerate((1.0, 1.0, 3.0)):
        X = _sample(np.random.default_rng(i), 1000, session_scale=scale)
        _write_manifest(tmp_path, f"2026-03-0{i + 1}", drift_report(X, det.anomaly_scores(X), meta, LIMITS), "v1")
    png = tmp_path / "m.png"
    result = CliRunner().invoke(cli, ["monitor", "--start", "2026-03-01", "--end", "2026-03-04",
                                      "--output-dir", str(tmp_path), "--png", str(png)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["date", "scored", "alerts"]
    assert [ln.split()[-2] for ln in lines[1:4]] == ["ok", "ok", "drift"]
    assert "no run for: 2026-03-04" in result.output
    assert "retraining advised: 1 of 3 days drifted (first 2026-03-03, latest 2026-03-03" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calm = CliRunner().invoke(cli, ["monitor", "--start", "2026-03-01", "--end", "2026-03-02",
                                    "--output-dir", str(tmp_path), "--png", str(png)])
    assert calm.exit_code == 0 and "no retraining needed" in calm.output
    empty = CliRunner().invoke(cli, ["monitor", "--start", "2026-04-01", "--end", "2026-04-02",
                                     "--output-dir", str(tmp_path)])
    assert empty.exit_code == 1 and "no run manifests between 2026-04-01 and 2026-04-02" in empty.output
    unwritable = CliRunner().invoke(cli, ["monitor", "--start", "2026-03-01", "--end", "2026-03-02",
                                          "--output-dir", str(tmp_path), "--png", str(png / "m.png")])
    assert unwritable.exit_code == 1 and f"cannot write the chart to {png / 'm.png'}" in unwritable.output
    assert "Traceback" not in unwritable.output


def test_a_weekday_is_compared_with_the_same_weekday_of_training(reference: dict[str, Any]) -> None:
    """Weekends with a different rhythm are drift against the pooled window, not against
    the training weekends."""
    from uba.drift import reference_for_weekday, weekday_references

    rng = np.random.default_rng(11)
    days = [date(2026, 3, 2) + timedelta(days=i // 500) for i in range(21 * 500)]  # 3 weeks
    weekdays = np.array([d.weekday() for d in days])
    X = _sample(rng, weekdays.size)
    weekend = weekdays >= 5
    X[weekend, 0] = np.log1p(np.expm1(X[weekend, 0]) * 4.0)   # weekend sessions 4x longer
    detector, train_scores = fit_detector(X, NAMES, ModelSettings(n_estimators=50), 98.0)
    meta = {"feature_names": list(NAMES), "threshold": detector.threshold, "percentile": 98.0,
            "feature_reference": feature_reference(X, NAMES), "score_summary": score_summary(train_scores)}
    meta["drift_reference_by_weekday"] = weekday_references(X, train_scores, days, NAMES, min_rows=1000,
                                                            min_days=3)
    assert set(meta["drift_reference_by_weekday"]) == {str(d) for d in range(7)}
    assert weekday_references(X, train_scores, days, NAMES, min_rows=1000, min_days=4) == {}

    saturday = _sample(np.random.default_rng(12), 1500)
    saturday[:, 0] = np.log1p(np.expm1(saturday[:, 0]) * 4.0)
    scores = detector.anomaly_scores(saturday)
    pooled = drift_report(saturday, scores, meta, LIMITS)
    same_day, name = reference_for_weekday(meta, 5)
    seasonal = drift_report(saturday, scores, same_day, LIMITS)
    assert name == "training Saturdays (3 days, 1500 events)"
    assert pooled["feature_psi"]["f_session"] > LIMITS.psi_drift
    assert not seasonal["retrain_advised"] and seasonal["max_feature_psi"] < LIMITS.psi_warn, seasonal["warnings"]
    assert seasonal["score_psi"] < LIMITS.psi_warn
    assert reference_for_weekday({k: v for k, v in meta.items() if k != "drift_reference_by_weekday"},
                                 5)[1] == "pooled training window"
