"""User-level detection of multi-day campaigns, through the real CLI (the user-level targets).

Per world: ``generate --users 500 --days 28 --campaigns N --campaigns-from <day 22>``,
``train`` on the first 21 days, ``backfill`` the last 7 (every run publishes risk/),
``evaluate`` over those 7 days; the user-level section of ``evaluation.json`` compares
users ranked by entity risk with users ranked by their maximum event score. Two seeds
with different persona mixes.

Beside the verdicts, from the labels and the published outputs, the figures that say why
a target is missed: per campaign, the first day of an alert on one of its own events, of
any alert, and of high risk; who holds the top-k places (campaign users, users with a
labelled event-level anomaly, others); the share of top-k places that any ranking built
from alerts alone could reach (campaign users with an alert since their campaign began);
and the same risk replayed from the published alerts with other settings, one at a time
(``uba.alerting.risk.contributions_of_day`` and ``compute_risk``, as ``score`` runs them; the
defaults must reproduce the published tables' figures).

    .venv/bin/python benchmarks/user_level.py --work /tmp/uba-user-level \\
        --output benchmarks/results/user_level.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
from _cli import uba_batch
from _machine import machine_info

from uba import io
from uba.alerting.risk import HIGH_LEVELS, compute_risk, contributions_of_day
from uba.monitoring.user_evaluation import (
    active_users,
    max_score_ranking,
    precision_at_k,
    read_campaigns,
    risk_ranking,
    time_to_high,
)
from uba.scoring.driver import RISK_FLAGGED_COLUMNS
from uba.settings import RiskSettings

START = date(2026, 3, 1)
FOUND_FROM = (1, 2, 3)  # campaign days from which a perfect ranking is assumed to find the user
DAYS = 28
TRAIN_DAYS = 21
WORLDS = (
    ("seed 31, default persona mix", 31, []),
    ("seed 32, night-heavy mix", 32, ["--persona-mix", "office=0.3,night=0.3,apac=0.1,power=0.1,light=0.2"]),
)
# Entity risk settings replayed over the published alerts; the defaults first (their replay
# must give the published figures), then one setting changed at a time.
# `sustained_day_gain` 0.7 is the default before multi-day signals could close what two capped days close.
# The last variant is the former formula (no cap on one day's gain, its scale and weights).
VARIANTS: tuple[dict[str, float], ...] = (
    {}, {"half_life_days": 7.0}, {"half_life_days": 14.0}, {"scale_points": 5.0}, {"scale_points": 20.0},
    {"max_day_gain": 0.45}, {"max_day_gain": 0.65}, {"sustained_day_gain": 0.55}, {"sustained_day_gain": 0.7},
    {"sustained_day_gain": 0.85},
    {"repeat_factor": 0.25}, {"repeat_factor": 0.8}, {"diversity_bonus": 0.0}, {"diversity_bonus": 1.0},
    {"max_margin_factor": 1.0}, {"max_repeats": 1}, {"user_day_points": 10.0}, {"user_day_points": 0.0},
    {"max_day_gain": 1.0, "sustained_day_gain": 1.0, "scale_points": 50.0, "user_day_points": 10.0},
)


def run_world(work: Path, seed: int, extra: list[str], campaigns: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_end = START + timedelta(days=TRAIN_DAYS - 1)
    first, last = train_end + timedelta(days=1), START + timedelta(days=DAYS - 1)
    began = time.perf_counter()
    uba_batch("generate", "--out", "data", "--users", "500", "--days", str(DAYS), "--start", START.isoformat(),
         "--seed", str(seed), "--campaigns", str(campaigns), "--campaigns-from", first.isoformat(), *extra,
         cwd=work)
    uba_batch("train", "--data-dir", "data", "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_DAYS),
         "--model-dir", "models", cwd=work)
    uba_batch("backfill", "--start", first.isoformat(), "--end", last.isoformat(), "--data-dir", "data",
         "--model-dir", "models", "--output-dir", "output", cwd=work)
    summary = uba_batch("evaluate", "--data-dir", "data", "--model-dir", "models", "--output-dir", "output",
                   "--start", first.isoformat(), "--end", last.isoformat(), cwd=work)
    seconds = time.perf_counter() - began
    report = json.loads((work / "output" / "evaluation" / "evaluation.json").read_text())
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    modes = sorted({json.loads(m.read_text())["execution"]["mode"]
                    for m in (work / "output" / "runs").glob("event_date=*/manifest.json")})
    return {"report": report, "summary": summary, "seconds": seconds, "modes": modes,
            "diagnostics": diagnostics(work, days, report)}


# --- why: from the labels and the published outputs ------------------------------------


def _alerts(output: Path, day: date) -> pl.DataFrame:
    """Every alert that can build risk on ``day``: unsuppressed event alerts (with the event
    id) and user-day alerts (without)."""
    flagged = pl.read_parquet(io.partition_files(output, "flagged", day))
    events = flagged.filter(pl.col("is_anomaly") & ~pl.col("suppressed").fill_null(False)).select(
        pl.col("user_id").cast(pl.String), pl.col("event_id").cast(pl.String))
    parts = [events]
    user_days = io.partition_files(output, "flagged_users", day)
    if user_days:
        parts.append(pl.read_parquet(user_days).select(pl.col("user_id").cast(pl.String),
                                                        pl.lit(None, pl.String).alias("event_id")))
    return pl.concat(parts).with_columns(pl.lit(day, pl.Date).alias("event_date"))


def _replayed_ranking(output: Path, days: list[date], settings: RiskSettings) -> pl.DataFrame:
    """Entity risk recomputed from the published alerts with ``settings`` (no feedback and no
    directory in these worlds, as when they were scored)."""
    previous, previous_day, rows = None, None, []
    for day in days:
        flagged = pl.read_parquet(io.partition_files(output, "flagged", day))
        flagged = flagged.select([c for c in flagged.columns if c in RISK_FLAGGED_COLUMNS])
        user_days = io.partition_files(output, "flagged_users", day)
        contributions = contributions_of_day(flagged, pl.read_parquet(user_days) if user_days else None, day, settings)
        table = compute_risk(contributions, previous, previous_day, day, settings)
        rows.append(table.select("user_id", pl.lit(day, pl.Date).alias("event_date"),
                                 pl.col("risk_score").alias("value"), pl.col("risk_level").is_in(HIGH_LEVELS).alias("high")))
        previous, previous_day = table, day
    return pl.concat(rows)


def diagnostics(work: Path, days: list[date], report: dict) -> dict:
    data, output = work / "data", work / "output"
    campaigns = read_campaigns(data)
    if campaigns is None or "skipped" in report["user_level"]:
        return {}
    labels = pl.read_parquet(data / "labels" / "labels.parquet").select(
        pl.col("event_id").cast(pl.String), pl.col("user_id").cast(pl.String), "event_date", "is_anomaly", "level")
    alerts = pl.concat([_alerts(output, d) for d in days]).join(
        labels.select("event_id", (pl.col("level") == "campaign").alias("own")), on="event_id", how="left"
    ).with_columns(pl.col("own").fill_null(False))
    high = {(c["user_id"], c["start"]): c["days"]
            for c in report["user_level"]["rankings"]["risk_score"]["time_to_high"]["campaigns"]}
    per_campaign = []
    for c in campaigns.sort("kind", "start", "user_id").iter_rows(named=True):
        mine = alerts.filter((pl.col("user_id") == c["user_id"]) & pl.col("event_date").is_between(c["start"], c["end"]))
        own = mine.filter(pl.col("own"))["event_date"]
        per_campaign.append({
            "user_id": c["user_id"], "kind": c["kind"], "start": c["start"].isoformat(),
            "days": (c["end"] - c["start"]).days + 1,
            "own_alert": (own.min() - c["start"]).days if own.len() else None,
            "any_alert": (mine["event_date"].min() - c["start"]).days if mine.height else None,
            "high": high.get((c["user_id"], c["start"].isoformat())),
        })
    # who holds the top-k places of each ranking, and what an alert-only ranking could reach
    event_anomalies = labels.filter(pl.col("is_anomaly") & (pl.col("level") != "campaign"))
    rankings = {"risk_score": risk_ranking(output, days), "max_event_score": max_score_ranking(output, days)}
    holders = {name: {"campaign": 0, "event_anomaly_same_day": 0, "event_anomaly_earlier": 0, "other": 0}
               for name in rankings}
    ceiling = []
    for day in days:
        active = active_users(campaigns, day)
        if not active:
            continue
        same = set(event_anomalies.filter(pl.col("event_date") == day)["user_id"])
        earlier = set(event_anomalies.filter(pl.col("event_date").is_between(days[0], day))["user_id"])
        for name, ranking in rankings.items():
            top = (ranking.filter(pl.col("event_date") == day).sort(["value", "user_id"], descending=[True, False])
                   .head(len(active))["user_id"].to_list())
            for user in top:
                key = ("campaign" if user in active else "event_anomaly_same_day" if user in same
                       else "event_anomaly_earlier" if user in earlier else "other")
                holders[name][key] += 1
        started = campaigns.filter(pl.col("user_id").is_in(list(active))).select("user_id", "start")
        seen = alerts.join(started, on="user_id").filter(pl.col("event_date").is_between(pl.col("start"), day))
        into = campaigns.filter(pl.col("user_id").is_in(list(active))).select(
            (pl.lit(day, pl.Date) - pl.col("start")).dt.total_days().alias("d"))["d"]
        ceiling.append({"any": seen["user_id"].n_unique() / len(active),
                        "own": seen.filter(pl.col("own"))["user_id"].n_unique() / len(active),
                        **{f"from_{n}": int((into >= n).sum()) / len(active) for n in FOUND_FROM}})
    # the same risk with other settings, replayed from the published alerts
    variants = []
    for changed in VARIANTS:
        ranking = _replayed_ranking(output, days, RiskSettings(**changed))
        t = time_to_high(ranking, campaigns)
        others = ranking.filter(pl.col("high") & ~pl.col("user_id").is_in(campaigns["user_id"].implode()))
        per_day = others.group_by("event_date").len()["len"]
        variants.append({"settings": changed,
                         "precision_at_k": precision_at_k(ranking, campaigns, days)["mean_precision_at_k"],
                         "median_days": t["median_days"], "reached": t["reached"], "total": t["total"],
                         "others_high_max": int(per_day.max() or 0), "others_high_user_days": others.height})
    published = report["user_level"]["rankings"]["risk_score"]
    if (abs(variants[0]["precision_at_k"] - published["precision_at_k"]["mean_precision_at_k"]) > 1e-12
            or variants[0]["reached"] != published["time_to_high"]["reached"]):
        sys.exit(f"the replayed risk does not reproduce the published one in {work}: the replay is wrong, "
                 "its figures would be too")
    return {"campaigns": per_campaign, "top_k_holders": holders,
            "ceiling_any_alert": sum(c["any"] for c in ceiling) / len(ceiling),
            "ceiling_own_alert": sum(c["own"] for c in ceiling) / len(ceiling),
            "ceiling_found_from": {n: sum(c[f"from_{n}"] for c in ceiling) / len(ceiling) for n in FOUND_FROM},
            "variants": variants}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(t: dict) -> str:
    return "not reached" if t["median_days"] is None else f"{t['median_days']:.1f}"


def _day(value: int | None) -> str:
    return "never" if value is None else f"day {value}"


def write(path: Path, results: list[tuple[str, dict]], command: str, campaigns: int) -> None:
    info = machine_info("polars", "numpy", "scikit-learn")
    modes = sorted({m for _, r in results for m in r["modes"]})
    default = RiskSettings()
    lines = [
        "# User-level detection of multi-day campaigns", "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/user_level.py`.", "",
        "Command:", "", "```", command, "```", "", "## Machine", "",
        *[f"- {k}: {v}" for k, v in info.items()], "",
        "## Setup", "",
        f"- `generate --users 500 --days {DAYS} --campaigns {campaigns} --campaigns-from <day {TRAIN_DAYS + 1}>` "
        "(default `--anomaly-rate` 0.02: the event-level anomalies are planted too), "
        f"`train` on the first {TRAIN_DAYS} days, `backfill` the last {DAYS - TRAIN_DAYS} (default settings; "
        f"execution mode of the scored days, from their manifests: {', '.join(modes)}), `evaluate` over them.",
        f"- Entity risk defaults: half-life {default.half_life_days:g} days, scale {default.scale_points:g} points, "
        f"one day closes at most {default.max_day_gain:g} of the gap to 100 (multi-day signals "
        f"{default.sustained_day_gain:g} of what is left), user-day alerts "
        f"{default.user_day_points:g} points per unit of strength, high at {default.high_cut:g}.",
        "- precision@k (= recall@k, k = users with an active campaign that day) averaged over the days with at "
        "least one active campaign; time to high from each campaign's start, within the campaign (risk: first "
        "day at high or above; max event score: first unsuppressed alert); a median is \"not reached\" when "
        "more than half the campaigns never get there. Only campaign users are positives: a user with a "
        "planted event-level anomaly in the top k counts against precision@k.", "",
        "## Results", "",
        "| world | ranking | precision@k | days | median days to high | reached | AP (user-days) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results:
        user = result["report"]["user_level"]
        if "skipped" in user:
            lines.append(f"| {name} | skipped: {user['skipped']} | | | | | |")
            continue
        for ranking, r in user["rankings"].items():
            p, t, c = r["precision_at_k"], r["time_to_high"], r["pr_curve"]
            lines.append(f"| {name} | {ranking} | {_fmt(p['mean_precision_at_k'])} | {p['days_with_campaigns']} | "
                         f"{_median(t)} | {t['reached']}/{t['total']} | {_fmt(c['average_precision'])} |")
    lines += ["", "## The user-level targets", "",
              "The gain is precision@k of the risk ranking minus precision@k of the max-event-score ranking "
              "(`precision_at_k_gain` in `evaluation.json`).", "",
              "| world | precision@k >= 0.8 | median time to high <= 2 days | risk beats max score by >= 0.2 |",
              "|---|---|---|---|"]
    for name, result in results:
        user = result["report"]["user_level"]
        if "skipped" in user:
            continue
        risk = user["rankings"]["risk_score"]
        p = risk["precision_at_k"]["mean_precision_at_k"] or 0.0
        t = risk["time_to_high"]
        median = t["median_days"]
        gain = user["precision_at_k_gain"] or 0.0
        lines.append(f"| {name} | {p:.3f}: {'met' if p >= 0.8 else 'missed'} | "
                     f"{_median(t)} ({t['reached']}/{t['total']} reached): "
                     f"{'met' if median is not None and median <= 2 else 'missed'} | "
                     f"{gain:+.3f}: {'met' if gain >= 0.2 else 'missed'} |")
    lines += ["", "## Why: the evidence entity risk is built from", "",
              "Per campaign: the first campaign day (0 = its start) with an unsuppressed alert on one of the "
              "campaign's own events, with any alert of the user (event or user-day; another planted anomaly "
              "may fall on a campaign user), and at high entity risk.", ""]
    for name, result in results:
        diag = result["diagnostics"]
        if not diag:
            continue
        lines += [f"### {name}", "", "| user | kind | start | days | alert on its own events | any alert | high risk |",
                  "|---|---|---|---:|---|---|---|"]
        lines += [f"| {c['user_id']} | {c['kind']} | {c['start']} | {c['days']} | {_day(c['own_alert'])} | "
                  f"{_day(c['any_alert'])} | {_day(c['high'])} |" for c in diag["campaigns"]]
        lines += ["", "Who holds the top-k places, summed over the campaign days (event anomaly: a user with a "
                  "labelled event-level anomaly that day, or on an earlier scored day):", "",
                  "| ranking | campaign users | event anomaly, same day | event anomaly, earlier day | other |",
                  "|---|---:|---:|---:|---:|"]
        for ranking, h in diag["top_k_holders"].items():
            lines.append(f"| {ranking} | {h['campaign']} | {h['event_anomaly_same_day']} | "
                         f"{h['event_anomaly_earlier']} | {h['other']} |")
        lines += ["", f"Ceiling of precision@k for any ranking built from alerts alone (the share of active "
                  f"campaign users with an alert since their campaign began, averaged over the days): "
                  f"{diag['ceiling_any_alert']:.3f} with any alert, {diag['ceiling_own_alert']:.3f} with an alert "
                  f"on the campaign's own events.", "",
                  "Ceiling of precision@k if every campaign user were ranked above every other user from "
                  "their campaign's day n on, and never before (how much the first days of the campaigns "
                  "weigh in the average): " + ", ".join(f"n = {n}: {v:.3f}" for n, v in
                                                        diag["ceiling_found_from"].items()) + ".", "",
                  "Entity risk replayed from the published alerts with one setting changed at a time (the "
                  "defaults reproduce the published figures):", "",
                  "| risk setting | precision@k | gain over max score | median days to high | reached | "
                  "users without a campaign at high: most in a day | their user-days at high |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        score_p = result["report"]["user_level"]["rankings"]["max_event_score"]["precision_at_k"]["mean_precision_at_k"]
        for v in diag["variants"]:
            changed = ", ".join(f"`{k}` {val:g}" for k, val in v["settings"].items()) or "defaults"
            lines.append(f"| {changed} | {v['precision_at_k']:.3f} | {v['precision_at_k'] - score_p:+.3f} | "
                         f"{_median(v)} | {v['reached']}/{v['total']} | {v['others_high_max']} | "
                         f"{v['others_high_user_days']} |")
        lines.append("")
    lines += ["## Event-level figures of the same runs (`evaluate`)", "",
              "Campaign events are labelled anomalous too, so these are not comparable with the event-level detection runs "
              "(docs/evaluation.md), which had no campaigns.", ""]
    for name, result in results:
        lines += [f"### {name} ({result['seconds']:.0f} s generate to evaluate)", "", "```",
                  result["summary"].strip(), "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uba-user-level"),
                        help="Work directory; world0/ and world1/ under it are deleted and rebuilt.")
    parser.add_argument("--campaigns", type=int, default=12, help="Campaigns planted per world (default 12).")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "user_level.md",
                        help="Markdown results file.")
    args = parser.parse_args()
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    results = []
    for i, (name, seed, extra) in enumerate(WORLDS):
        result = run_world(args.work / f"world{i}", seed, extra, args.campaigns)
        print(name, json.dumps({k: v.get("precision_at_k", {}).get("mean_precision_at_k")
                                for k, v in result["report"]["user_level"].get("rankings", {}).items()}),
              flush=True)
        results.append((name, result))
    write(args.output, results, command, args.campaigns)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
