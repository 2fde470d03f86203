"""Drift checks against a real bundle reference (uba.model.bundle summaries of a fitted detector);
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
from uba.model.bundle import bin_proportions, feature_reference, score_summary
from uba.model.forest import fit_detector
from uba.monitoring.drift import (
    DayUsers,
    DriftCounts,
    drift_counts,
    drift_report_from_counts,
    psi,
    score_reference,
)
from uba.settings import ModelSettings, MonitoringSettings

NAMES = ("f_session", "f_actions", "f_hour", "f_weekday")
LIMITS = MonitoringSettings(ignore_features=("f_weekday",))


def _day_report(X: np.ndarray, scores: np.ndarray, meta: dict[str, Any], limits: MonitoringSettings) -> dict[str, Any]:
    """A day's drift report as ``score`` makes it: a shard's bin counts (``drift_counts``), added
    up by ``RunOperations.add_partial``, judged by ``drift_report_from_counts``."""
    return drift_report_from_counts(DriftCounts().merge(drift_counts(X, scores, meta)), meta, limits)


def _reference_shares_match(metadata: dict[str, Any], X: np.ndarray) -> bool:
    """True when binning ``X`` reproduces the bundle's training shares."""
    reference = metadata["feature_reference"]["features"]
    return all(np.allclose(bin_proportions(X[:, i], reference[name]["cuts"]), reference[name]["proportions"],
                           atol=1e-12)
               for i, name in enumerate(metadata["feature_names"]))


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
    assert _reference_shares_match(reference["metadata"], reference["train"])


def test_an_ordinary_day_is_not_drift(reference: dict[str, Any]) -> None:
    X = _sample(np.random.default_rng(99), 1500)
    scores = reference["detector"].anomaly_scores(X)
    report = _day_report(X, scores, reference["metadata"], LIMITS)
    assert report["status"] == "ok", report
    assert not report["retrain_advised"] and report["why"] == []
    assert report["max_feature_psi"] < LIMITS.psi_warn
    assert report["score_psi"] < LIMITS.psi_warn
    assert report["expected_alert_rate"] == pytest.approx(0.02)
    assert 0.005 < report["alert_rate"] < 0.05


def test_sessions_three_times_longer_is_drift_with_reasons(reference: dict[str, Any]) -> None:
    X = _sample(np.random.default_rng(99), 1500, session_scale=3.0)
    report = _day_report(X, reference["detector"].anomaly_scores(X), reference["metadata"], LIMITS)
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
        merged = merged.merge(drift_counts(X[part], scores[part], meta))
    assert drift_report_from_counts(merged, meta, LIMITS) == _day_report(X, scores, meta, LIMITS)


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
        _write_manifest(tmp_path, f"2026-03-0{i + 1}", _day_report(X, det.anomaly_scores(X), meta, LIMITS), "v1")
    png = tmp_path / "m.png"
    result = CliRunner().invoke(cli, ["monitor", "--start", "2026-03-01", "--end", "2026-03-04",
                                      "--output-dir", str(tmp_path), "--png", str(png)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["date", "scored", "alerts"]
    assert [ln.split()[-2] for ln in lines[1:4]] == ["ok", "ok", "drift"]
    assert "no run for 1 day(s): 2026-03-04" in result.output
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


def test_monitor_days_reads_the_range_back_from_the_manifests(reference: dict[str, Any], tmp_path: Path) -> None:
    """The library call behind `monitor`: rows of days with a run, days without, the
    default chart path and the advice, with no printing involved."""
    from uba.monitoring.runs import monitor_days
    from uba.settings import load_settings

    meta, det = reference["metadata"], reference["detector"]
    for i, scale in enumerate((1.0, 3.0)):
        X = _sample(np.random.default_rng(i), 1000, session_scale=scale)
        _write_manifest(tmp_path, f"2026-03-0{i + 1}", _day_report(X, det.anomaly_scores(X), meta, LIMITS), "v1")
    settings = load_settings(None, overrides={"paths": {"output_dir": str(tmp_path)}})
    summary = monitor_days(settings, date(2026, 3, 1), date(2026, 3, 3), None)
    assert [r["date"] for r in summary.rows] == ["2026-03-01", "2026-03-02"]
    assert [r["status"] for r in summary.rows] == ["ok", "drift"]
    assert summary.missing == [date(2026, 3, 3)] and summary.stale == []
    assert summary.chart == tmp_path / "monitoring" / "monitor-2026-03-01_2026-03-03.png"
    assert summary.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.advice is not None and summary.advice.startswith("retraining advised: 1 of 2 days drifted")


def test_a_weekday_is_compared_with_the_same_weekday_of_training(reference: dict[str, Any]) -> None:
    """Weekends with a different rhythm are drift against the pooled window, not against
    the training weekends."""
    from uba.monitoring.drift import reference_for_weekday, weekday_references

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
    pooled = _day_report(saturday, scores, meta, LIMITS)
    same_day, name = reference_for_weekday(meta, 5)
    seasonal = _day_report(saturday, scores, same_day, LIMITS)
    assert name == "training Saturdays (3 days, 1500 events)"
    assert pooled["feature_psi"]["f_session"] > LIMITS.psi_drift
    assert not seasonal["retrain_advised"] and seasonal["max_feature_psi"] < LIMITS.psi_warn, seasonal["warnings"]
    assert seasonal["score_psi"] < LIMITS.psi_warn
    assert reference_for_weekday({k: v for k, v in meta.items() if k != "drift_reference_by_weekday"},
                                 5)[1] == "pooled training window"


# --- the cross-fitted reference and the excess over chance ---------------------------------


def test_chance_psi_covers_samples_of_one_distribution_and_not_a_shift() -> None:
    """n * PSI ~ chi2(bins - 1): at confidence 0.999 about one day in a thousand of an
    unchanged distribution has any excess, while a real shift keeps nearly all its PSI."""
    from uba.monitoring.drift import chance_psi

    rng = np.random.default_rng(3)
    shares = np.array([0.2, 0.2, 0.2, 0.2, 0.15, 0.05])
    noise = chance_psi(len(shares), 230, 450, 0.999)
    assert noise == pytest.approx(20.515 * (1 / 230 + 1 / 450), rel=1e-3)
    over = 0
    for _ in range(2000):
        reference = rng.multinomial(450, shares) / 450
        over += psi(rng.multinomial(230, shares), reference) > noise
    assert over <= 10, f"{over} of 2000 same-distribution days passed the chance level"
    moved = shares.copy()
    moved[:2] -= 0.1
    moved[-1] += 0.2
    shifted = psi(rng.multinomial(230, moved), shares)
    assert shifted - noise > LIMITS.psi_drift
    assert chance_psi(1, 230, 450, 0.999) == 0.0 and chance_psi(5, 0, 450, 0.999) == 0.0


def _training_window(constant_hour: bool = False) -> tuple[np.ndarray, Any]:
    """14 days x 60 users x 20 events; users start on day 0, so days 0-6 are warm-up, and
    warm-up rows have 3x the actions (what an immature baseline does to a feature)."""
    from uba.monitoring.drift import TrainingRows

    days, users, per = 14, 60, 20
    n = days * users * per
    day = np.repeat(np.arange(days), users * per)
    X = _sample(np.random.default_rng(21), n)
    X[day < 7, 1] += np.log(3.0)
    if constant_hour:
        X[:, 2] = 12.0
    first = np.datetime64("2026-03-02", "D")  # a Monday
    rows = TrainingRows(days=first + day, users=np.tile(np.repeat(np.arange(users), per), days).astype(str),
                        history_days=day)
    return X, rows


def test_the_reference_is_cross_fitted_and_leaves_out_the_warm_up() -> None:
    from uba.monitoring.drift import (
        build_drift_reference,
        cross_fitted_scores,
        reference_for_weekday,
    )

    X, rows = _training_window(constant_hour=True)
    model = ModelSettings(n_estimators=50)
    detector, in_sample = fit_detector(X, NAMES, model, 98.0)
    scores, kind = cross_fitted_scores(X, rows.days, NAMES, model, 98.0)
    assert kind == "cross-fitted" and scores.shape == in_sample.shape
    assert not np.allclose(scores, in_sample)
    ref = build_drift_reference(X, scores, kind, rows, detector.threshold, NAMES, LIMITS)
    mature = rows.history_days >= LIMITS.reference_min_history_days
    pooled = ref["pooled"]
    assert not ref["warm_up_rows_included"]
    assert pooled["rows"] == int(mature.sum()) and pooled["days"] == 7 and pooled["user_days"] == 7 * 60
    assert pooled["feature_reference"] == feature_reference(X[mature], NAMES)
    assert pooled["score_reference"]["cuts"] == [float(c) for c in np.quantile(scores[mature], (0.2, 0.4, 0.6, 0.8,
                                                                                                   0.95))]
    alerted = {(d, u) for d, u, s in zip(rows.days[mature].tolist(), rows.users[mature].tolist(),
                                         scores[mature], strict=True) if s >= detector.threshold}
    assert pooled["alerted_user_days"] == len(alerted) > 0
    assert ref["constant_features"] == ["f_hour"]
    assert ref["weekdays"] == {}, "one mature day per weekday is fewer than weekday_reference_min_days"
    meta = {"feature_names": list(NAMES), "threshold": detector.threshold, "percentile": 98.0,
            "drift_reference": ref}
    chosen, name = reference_for_weekday(meta, 5)
    assert name == "training window (cross-fitted scores, 7 days, 420 user-days)"
    assert chosen["reference_user_days"] == 420 and chosen["constant_features"] == ["f_hour"]

    # a mature day like the training one: no drift, although the in-sample reference
    # and the warm-up would have moved its PSI
    day = _sample(np.random.default_rng(77), 1200)
    day[:, 2] = 12.0
    counts = drift_counts(day, detector.anomaly_scores(day), chosen)
    usual_alerted = round(60 * pooled["alerted_user_days"] / 420)
    report = drift_report_from_counts(counts, chosen, LIMITS, DayUsers(active=60, alerted=usual_alerted))
    assert report["judged_by"] == "excess" and report["status"] == "ok", report
    assert report["unused_features"] == ["f_hour"] and report["max_feature"] != "f_hour"
    # with the whole window the warm-up's 3x actions are part of "normal"
    everything = build_drift_reference(X, scores, kind, rows, detector.threshold, NAMES,
                                       MonitoringSettings(reference_min_history_days=0))
    assert everything["pooled"]["rows"] == X.shape[0]
    assert everything["pooled"]["feature_reference"]["features"]["f_actions"] != \
        pooled["feature_reference"]["features"]["f_actions"]


def test_the_same_shift_is_noise_for_twenty_users_and_drift_for_two_thousand(reference: dict[str, Any]) -> None:
    meta = {**reference["metadata"], "reference_user_days": 4000, "reference_alerted_user_days": 80}
    counts = _counts_like_reference(meta, 20000, {"f_session": 0.25}, score_moved=0.25)
    few = drift_report_from_counts(counts, meta, LIMITS, DayUsers(active=20, alerted=0))
    many = drift_report_from_counts(counts, meta, LIMITS, DayUsers(active=2000, alerted=40))
    assert few["feature_psi"] == many["feature_psi"] and few["score_psi"] == many["score_psi"]
    assert few["status"] == "ok" and few["score_psi_excess"] == 0.0 and few["max_feature_psi_excess"] == 0.0
    assert many["status"] == "drift" and many["why"][0].startswith("anomaly score excess PSI")
    assert many["chance"] == {"users": 2000, "reference_user_days": 4000, "confidence": LIMITS.confidence}
    # without the day's users (older callers) the raw PSI is judged, as before
    assert drift_report_from_counts(counts, meta, LIMITS)["judged_by"] == "psi"


@pytest.mark.parametrize(("active", "alerted", "warns"), [
    (200, 4, False),    # the 4 expected
    (200, 9, False),    # 2.25x, but 9 against 4 is within chance
    (2000, 90, True),   # 2.25x of 40: beyond chance
    (2000, 12, True),   # 0.3x of 40: too few alerts is a warning too
])
def test_alert_volume_is_judged_in_users_beyond_chance(reference: dict[str, Any], active: int, alerted: int,
                                                       warns: bool) -> None:
    meta = {**reference["metadata"], "reference_user_days": 1000, "reference_alerted_user_days": 20}
    counts = _counts_like_reference(meta, 5000, {})
    report = drift_report_from_counts(counts, meta, LIMITS, DayUsers(active=active, alerted=alerted))
    assert report["expected_alerted_users"] == pytest.approx(active * 0.02)
    assert report["alerted_users"] == alerted
    assert (report["status"] == "warn") == warns, report
    assert any("users with an alert" in w for w in report["warnings"]) == warns


def test_monitor_names_the_days_without_a_run_and_the_scoring_models_as_runs_of_days(reference: dict[str, Any], tmp_path: Path) -> None:
    """A range reaching far past the scored days named every date without a run on one
    line: a mistyped end year (2099 for 2026) printed some 26,000 dates, 320 KB (found by
    an attack). Now runs of days, at most 12 of them, and the count."""
    meta, det = reference["metadata"], reference["detector"]
    X = _sample(np.random.default_rng(0), 1000)
    report = _day_report(X, det.anomaly_scores(X), meta, LIMITS)
    for day in ("2026-03-01", "2026-03-03", *(f"2026-04-{d:02d}" for d in range(1, 30, 2))):
        _write_manifest(tmp_path, day, report, "v2" if day >= "2026-04-05" else "v1")
    result = CliRunner().invoke(cli, ["monitor", "--start", "2026-03-01", "--end", "2099-06-01",
                                      "--output-dir", str(tmp_path), "--png", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("no run for")]
    missing = (date(2099, 6, 1) - date(2026, 3, 1)).days + 1 - 17
    assert line == (f"no run for {missing:,} day(s): 2026-03-02, 2026-03-04..2026-03-31, 2026-04-02, 2026-04-04, "
                    "2026-04-06, 2026-04-08, 2026-04-10, 2026-04-12, 2026-04-14, 2026-04-16, 2026-04-18, 2026-04-20 "
                    "and 5 more runs")
    # which model scored which days: a retrain between 2026-04-03 and 2026-04-05
    assert "scored by model: 2026-03-01..2026-04-03 v1, 2026-04-05..2026-04-29 v2" in result.output.splitlines()
