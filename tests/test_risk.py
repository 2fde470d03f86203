"""Entity risk (uba.alerting.risk): the pure formula on hand-made frames with exact expectations."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from uba.alerting.records import alert_id
from uba.alerting.risk import RISK_SCHEMA, compute_risk, contributions_of_day, read_risk_history
from uba.report import _sparklines
from uba.settings import RiskSettings

DAY = date(2026, 3, 10)
S = RiskSettings()


def _flagged(rows: list[tuple[str, str, float, list[str], bool]]) -> pl.DataFrame:
    """(event_id, user_id, anomaly_score, reason_kinds, suppressed), all over a 0.6 cut."""
    return pl.DataFrame({
        "event_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
        "anomaly_score": [r[2] for r in rows], "threshold": [0.6] * len(rows),
        "is_anomaly": [True] * len(rows), "reason_kinds": [r[3] for r in rows],
        "suppressed": [r[4] for r in rows],
    }, schema_overrides={"reason_kinds": pl.List(pl.String)})


def _risk(flagged: pl.DataFrame, user_days: pl.DataFrame | None = None, benign: tuple[str, ...] = (),
          previous: pl.DataFrame | None = None, previous_day: date | None = None,
          directory: pl.DataFrame | None = None, settings: RiskSettings = S) -> dict[str, dict]:
    contributions = contributions_of_day(flagged, user_days, DAY, settings, benign)
    table = compute_risk(contributions, previous, previous_day, DAY, settings, directory)
    return {r["user_id"]: r for r in table.to_dicts()}


def test_an_alert_is_worth_more_the_further_over_its_cut() -> None:
    risk = _risk(_flagged([("a", "u1", 0.6, ["hour"], False), ("b", "u2", 0.7, ["hour"], False)]))
    assert risk["u1"]["day_points"] == pytest.approx(S.event_points)
    assert risk["u2"]["day_points"] == pytest.approx(S.event_points * (1 + 0.1 / S.margin_unit))
    assert risk["u1"]["risk_score"] == pytest.approx(
        100 * S.max_day_gain * (1 - math.exp(-S.event_points / S.scale_points)))
    assert risk["u1"]["contributions"][0]["alert_id"] == alert_id("event", "a")


def test_suppressed_alerts_add_nothing() -> None:
    risk = _risk(_flagged([("a", "u1", 0.7, ["hour"], True), ("b", "u2", 0.7, ["hour"], False)]))
    assert "u1" not in risk and "u2" in risk


def test_different_kinds_weigh_more_than_repeats_of_one() -> None:
    repeats = _risk(_flagged([("a", "u1", 0.6, ["hour"], False), ("b", "u1", 0.6, ["hour"], False),
                              ("c", "u1", 0.6, ["hour"], False)]))["u1"]
    diverse = _risk(_flagged([("a", "u1", 0.6, ["hour"], False), ("b", "u1", 0.6, ["device"], False),
                              ("c", "u1", 0.6, ["actions"], False)]))["u1"]
    p = S.event_points
    assert repeats["day_points"] == pytest.approx(p * (1 + S.repeat_factor + S.repeat_factor ** 2))
    assert diverse["day_points"] == pytest.approx(3 * p * (1 + 2 * S.diversity_bonus))
    assert diverse["risk_score"] > repeats["risk_score"]


def test_a_benign_verdict_by_event_id_or_alert_id_removes_the_contribution() -> None:
    flagged = _flagged([("a", "u1", 0.6, ["hour"], False), ("b", "u1", 0.6, ["device"], False)])
    days = pl.DataFrame({"user_id": ["u1"], "day_score": [1.5], "reason_kinds": [["downloads"]]})
    full = _risk(flagged, days)["u1"]
    assert {c["type"] for c in full["contributions"]} == {"event", "user_day"}
    by_event = _risk(flagged, days, benign=("a",))["u1"]
    by_alert = _risk(flagged, days, benign=(alert_id("user_day", "u1", DAY.isoformat()),))["u1"]
    assert {c["event_id"] for c in by_event["contributions"]} == {None, "b"}
    assert {c["type"] for c in by_alert["contributions"]} == {"event"}
    assert by_event["day_points"] < full["day_points"] and by_alert["day_points"] < full["day_points"]


def test_privileged_and_critical_users_weigh_more() -> None:
    flagged = _flagged([("a", "u1", 0.6, ["hour"], False), ("b", "u2", 0.6, ["hour"], False),
                        ("c", "u3", 0.6, ["hour"], False)])
    directory = pl.DataFrame({"user_id": ["u1", "u2"], "department": ["it", "it"], "role": ["admin", "analyst"],
                              "is_privileged": [True, False], "criticality": ["critical", None]})
    risk = _risk(flagged, directory=directory)
    assert risk["u1"]["weight"] == pytest.approx(S.privileged_weight * S.criticality_weights["critical"])
    assert risk["u1"]["day_points"] == pytest.approx(S.event_points * risk["u1"]["weight"])
    assert risk["u2"]["weight"] == 1.0 and risk["u3"]["weight"] == 1.0, "no criticality / not listed: 1"
    assert risk["u1"]["risk_score"] > risk["u2"]["risk_score"] == risk["u3"]["risk_score"]


def test_yesterday_decays_over_calendar_days_including_days_without_a_run() -> None:
    previous = pl.DataFrame({"user_id": ["u1", "u2"], "risk_score": [80.0, 50.0],
                             "first_seen_high": [date(2026, 3, 5), None]})
    empty = _flagged([])
    gap = _risk(empty, previous=previous, previous_day=date(2026, 3, 7))  # 3 days, two without a run
    assert gap["u1"]["risk_score"] == pytest.approx(80.0 * 0.5 ** (3 / S.half_life_days), abs=1e-12)
    assert gap["u1"]["risk_delta"] == pytest.approx(gap["u1"]["risk_score"] - 80.0 * 0.5 ** (2 / S.half_life_days))
    assert gap["u1"]["contributions"] == [] and gap["u1"]["risk_level"] == "medium"
    assert gap["u1"]["first_seen_high"] is None, "fell below high: the episode ended"
    more = _risk(_flagged([("a", "u2", 0.6, ["hour"], False)]), previous=previous, previous_day=date(2026, 3, 9))
    carried = 50.0 * 0.5 ** (1 / S.half_life_days)
    assert more["u2"]["carried_score"] == pytest.approx(carried)
    # one day's own points close at most max_day_gain of the gap to 100 (docs/risk.md)
    closed = carried + (100.0 - carried) * S.max_day_gain * (1.0 - math.exp(-S.event_points / S.scale_points))
    assert more["u2"]["risk_score"] == pytest.approx(closed)


def test_levels_episode_start_and_the_floor() -> None:
    settings = RiskSettings(half_life_days=100.0)
    previous = pl.DataFrame({"user_id": ["hi", "faint"], "risk_score": [95.0, 1.001],
                             "first_seen_high": [date(2026, 3, 1), None]})
    risk = _risk(_flagged([("a", "new", 0.6, ["hour"], False)]), previous=previous, previous_day=date(2026, 3, 9),
                 settings=settings)
    assert risk["hi"]["risk_level"] == "critical" and risk["hi"]["first_seen_high"] == date(2026, 3, 1)
    assert "faint" not in risk, "below risk.min_score with nothing new: dropped"
    assert risk["new"]["risk_level"] == "low"
    loud = _flagged([(f"e{i}", "x", 0.8, [k], False) for i, k in enumerate(["hour", "device", "actions"])])
    strong = _risk(loud, settings=settings)
    assert strong["x"]["risk_score"] == pytest.approx(100 * settings.max_day_gain, rel=1e-6)
    assert strong["x"]["risk_level"] == "medium" and strong["x"]["first_seen_high"] is None
    yesterday = pl.DataFrame({"user_id": ["x"], "risk_score": [strong["x"]["risk_score"]], "first_seen_high": [None]},
                             schema_overrides={"first_seen_high": pl.Date})
    again = _risk(loud, previous=yesterday, previous_day=date(2026, 3, 9), settings=settings)["x"]
    assert again["risk_level"] in ("high", "critical") and again["first_seen_high"] == DAY
    assert 0 <= again["risk_score"] < 100


def test_one_loud_day_stays_below_a_few_quiet_days_in_a_row() -> None:
    """A day closes at most max_day_gain of the gap to 100: a one-off burst of alerts is
    medium at most, while one user-day alert a day for three days climbs past it."""
    loud = _risk(_flagged([(f"e{i}", "spike", 0.8, [k], False) for i, k in enumerate(["hour", "device", "actions"])]))
    assert loud["spike"]["risk_score"] < 100 * S.max_day_gain < S.high_cut
    quiet = pl.DataFrame({"user_id": ["slow"], "day_score": [1.0], "reason_kinds": [["later_hours"]]})
    previous, previous_day = None, None
    for offset in (2, 1, 0):
        day = DAY - timedelta(days=offset)
        contributions = contributions_of_day(_flagged([]), quiet, day, S)
        previous = compute_risk(contributions, previous, previous_day, day, S)
        previous_day = day
    assert previous is not None
    slow = previous.row(0, named=True)
    assert slow["risk_score"] > loud["spike"]["risk_score"]
    expected = 0.0
    for _ in range(3):  # a multi-day signal: its points close up to sustained_day_gain of the gap
        carried = expected * 0.5 ** (1 / S.half_life_days)
        expected = carried + (100 - carried) * S.sustained_day_gain * (1 - math.exp(-S.user_day_points / S.scale_points))
    assert slow["risk_score"] == pytest.approx(expected, abs=1e-9)


def test_a_multi_day_signal_outranks_a_one_day_outlier_on_the_day_it_fires() -> None:
    """A multi-day signal stands for two days or more: it is not held to one day's cap but to
    what two capped days close (``sustained_day_gain`` = 1 - (1 - max_day_gain) ** 2), so on
    its first day it outranks the same points from a one-day user-day signal; alone, at its
    limit (strength 1) it stays just below high and a stronger one reaches it; and it adds
    to the day's other evidence rather than sharing its cap."""
    assert S.sustained_day_gain == pytest.approx(1 - (1 - S.max_day_gain) ** 2)
    days = pl.DataFrame({"user_id": ["drift", "burst", "edge"], "day_score": [1.5, 1.5, 1.0],
                         "reason_kinds": [["later_hours"], ["downloads"], ["longer_sessions"]]})
    risk = _risk(_flagged([]), days)
    points = S.user_day_points * 1.5
    assert risk["burst"]["risk_score"] == pytest.approx(
        100 * S.max_day_gain * (1 - math.exp(-points / S.scale_points)), abs=1e-9)
    assert risk["drift"]["risk_score"] == pytest.approx(
        100 * S.sustained_day_gain * (1 - math.exp(-points / S.scale_points)), abs=1e-9)
    assert risk["edge"]["risk_score"] == pytest.approx(
        100 * S.sustained_day_gain * (1 - math.exp(-S.user_day_points / S.scale_points)), abs=1e-9)
    assert risk["burst"]["risk_score"] < risk["edge"]["risk_score"] < S.high_cut <= risk["drift"]["risk_score"]
    both = _risk(_flagged([("a", "drift", 0.6, ["hour"], False)]), days)["drift"]
    bonus = 1 + S.diversity_bonus  # two kinds that day
    left = ((1 - S.max_day_gain * (1 - math.exp(-S.event_points * bonus / S.scale_points)))
            * (1 - S.sustained_day_gain * (1 - math.exp(-points * bonus / S.scale_points))))
    assert both["risk_score"] == pytest.approx(100 * (1 - left), abs=1e-9)
    assert both["risk_level"] == "high"


def test_cuts_must_increase() -> None:
    with pytest.raises(ValueError, match="must increase"):
        RiskSettings(medium_cut=80.0)
    with pytest.raises(ValueError, match="unknown criticality"):
        RiskSettings(criticality_weights={"huge": 2.0})


def _risk_table(output_dir: Path, day: str, scores: dict[str, float]) -> None:
    rows = [{"user_id": u, "risk_score": v, "risk_level": "medium", "risk_delta": v, "contributions": [],
             "first_seen_high": None, "carried_score": 0.0, "day_points": 5.0, "weight": 1.0}
            for u, v in scores.items()]
    part = output_dir / "risk" / f"event_date={day}"
    part.mkdir(parents=True)
    pl.DataFrame(rows, schema=RISK_SCHEMA).write_parquet(part / "part-00000.parquet")


def test_a_day_whose_risk_table_is_empty_is_a_zero_in_a_users_history(tmp_path: Path) -> None:
    """A day on which nobody had risk (an empty table) was left out of the filled history,
    so the report's 30-day chart drew one point fewer and joined the days around it
    (found by an attack)."""
    _risk_table(tmp_path, "2026-03-01", {"u1": 50.0})
    _risk_table(tmp_path, "2026-03-02", {})
    _risk_table(tmp_path, "2026-03-04", {"u1": 60.0, "u2": 10.0})
    history = read_risk_history(tmp_path, "u1", fill=True)
    assert history.select("event_date", "risk_score").rows() == [
        (date(2026, 3, 1), 50.0), (date(2026, 3, 2), 0.0), (date(2026, 3, 4), 60.0)]
    assert read_risk_history(tmp_path, "u1").height == 2  # unfilled: the user's own rows
    assert _sparklines(tmp_path, date(2026, 3, 4), ["u1", "u2"], 30) == {"u1": [50.0, 0.0, 60.0],
                                                                         "u2": [0.0, 0.0, 10.0]}


def test_alert_ids_of_many_findings_are_their_alert_ids() -> None:
    """Entity risk names a day's ~50,000 event alerts with one loop (``alert_ids``): the
    ids must be exactly ``alert_id``'s, which the published risk, feedback and exports use."""
    from uba.schema import alert_ids

    subjects = ["e1", "", "é-ü", "a\x1fb", "x" * 300]
    assert alert_ids("event", subjects) == [alert_id("event", s) for s in subjects]
    assert alert_ids("user_day", subjects, "2026-03-01") == [alert_id("user_day", s, "2026-03-01") for s in subjects]
    assert alert_ids("risk", subjects, "2026-03-01", "high") == [alert_id("risk", s, "2026-03-01", "high")
                                                                  for s in subjects]
    with pytest.raises(ValueError, match="unknown alert type"):
        alert_ids("nope", subjects)
