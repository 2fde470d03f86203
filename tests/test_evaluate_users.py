"""User-level evaluation on small hand-made rankings, where every number can be checked."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from uba.monitoring.user_evaluation import (
    RANKING_SCHEMA,
    pr_curve,
    precision_at_k,
    time_to_high,
    user_level_report,
)

D0 = date(2026, 3, 10)
DAYS = [D0 + timedelta(days=i) for i in range(4)]


def _ranking(rows: list[tuple[str, int, float, bool]]) -> pl.DataFrame:
    return pl.DataFrame([{"user_id": u, "event_date": D0 + timedelta(days=d), "value": v, "high": h}
                         for u, d, v, h in rows], schema=RANKING_SCHEMA)


CAMPAIGNS = pl.DataFrame({
    "user_id": ["a", "b"], "kind": ["takeover", "slow_exfiltration"],
    "start": [D0 + timedelta(days=1), D0 + timedelta(days=2)], "end": [D0 + timedelta(days=3)] * 2,
})


def test_precision_at_k_uses_only_days_with_a_campaign_and_k_active_users() -> None:
    ranking = _ranking([
        ("a", 0, 9.0, False), ("x", 0, 8.0, False),             # day 0: no campaign, not counted
        ("a", 1, 5.0, False), ("x", 1, 7.0, False),             # day 1: k=1, top is x: miss
        ("a", 2, 6.0, True), ("b", 2, 6.0, True), ("x", 2, 6.0, False),  # tie: a, b first by id
        ("b", 3, 3.0, True), ("x", 3, 4.0, False),              # day 3: k=2, top2 = x, b; a absent
    ])
    result = precision_at_k(ranking, CAMPAIGNS, DAYS)
    assert [(d["day"], d["k"], d["hits"]) for d in result["days"]] == [
        (DAYS[1].isoformat(), 1, 0), (DAYS[2].isoformat(), 2, 2), (DAYS[3].isoformat(), 2, 1)]
    assert result["mean_precision_at_k"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert result["mean_recall_at_k"] == result["mean_precision_at_k"]
    assert result["days_with_campaigns"] == 3


def test_time_to_high_counts_days_from_start_within_the_campaign() -> None:
    ranking = _ranking([("a", 0, 1, True), ("a", 1, 1, False), ("a", 3, 1, True), ("b", 2, 1, True)])
    result = time_to_high(ranking, CAMPAIGNS)
    assert [(c["user_id"], c["days"]) for c in result["campaigns"]] == [("a", 2), ("b", 0)]
    assert result["median_days"] == 1.0 and result["reached"] == 2  # a's high before its start is ignored
    never = time_to_high(_ranking([("b", 3, 1, True)]), CAMPAIGNS)
    assert never["median_days"] is None and never["reached"] == 1  # median of (1, inf) is inf: not reached


def test_pr_curve_average_precision_over_user_days() -> None:
    # campaign user-days: (a,1), (a,2), (b,2), (a,3), (b,3) = 5 positives
    ranking = _ranking([("a", 1, 9, False), ("x", 1, 8, False), ("a", 2, 7, False), ("b", 2, 1, False)])
    curve = pr_curve(ranking, CAMPAIGNS, DAYS)
    assert curve["positives"] == 5
    # ordered: a1 (hit, P=1), x1 (miss), a2 (hit, P=2/3), b2 (hit, P=3/4); AP = (1 + 2/3 + 3/4) / 5
    assert curve["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 5)
    assert curve["recall"][-1] == pytest.approx(3 / 5)


def test_report_says_why_it_is_skipped(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    assert "generate --campaigns" in user_level_report(out, data, DAYS)["skipped"]
    (data / "labels").mkdir(parents=True)
    CAMPAIGNS.write_parquet(data / "labels" / "campaigns.parquet")
    skipped = user_level_report(out, data, DAYS)["skipped"]
    assert f"no risk/ table for 4 of 4 days (first {DAYS[0]})" in skipped and "uba-batch backfill" in skipped
