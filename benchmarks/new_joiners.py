"""New joiners' false-positive rate in their first 5 days, with and without a user directory.

The new-joiner target: "New joiners' false-positive rate in their first 5 days, with a directory
present, is no higher than without it." The generator has no joiners, so this makes
them: per world, ``uba-batch generate --directory`` writes 28 days of a population and
its directory; a fixed random share of the users become joiners by dropping their
events before a join day (staggered over the first days of the scored week, so every
joiner's first 5 days are scored). The remaining events go through ``uba-batch ingest``
into a fresh data directory, then, twice on the same events:

- without a directory: ``train`` on the first 21 days, ``backfill`` the last 7;
- with the generated directory (``uba-batch users import``): the same, into another
  model and output directory.

Figures per world and variant, from ``scores/`` and the generator's labels: the false
positive rate of event alerts (``is_anomaly`` on an event not labelled anomalous, over
all such events) for the joiners' first 5 days and for everyone else on the same days;
the share of the joiners' first-5-days user-days with a user-day alert; recall of the
labelled anomalies, so a lower false-positive rate is not bought by flagging nothing.

    .venv/bin/python benchmarks/new_joiners.py --work /tmp/uba-new-joiners \\
        --output benchmarks/results/new_joiners.md
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from _cli import uba_batch
from _machine import machine_info

START = date(2026, 3, 1)
DAYS = 28
TRAIN_DAYS = 21
USERS = 300
JOINER_SHARE = 0.15
JOIN_SPREAD_DAYS = 3  # joiners join on the first, second or third scored day
FIRST_DAYS = 5
WORLDS = (
    ("seed 41, default persona mix", 41, []),
    ("seed 42, night-heavy mix", 42, ["--persona-mix", "office=0.3,night=0.3,apac=0.1,power=0.1,light=0.2"]),
)
RAW_COLUMNS = ("event_id", "user_id", "timestamp", "event_type", "session_duration_sec", "events_in_session",
               "device_type", "hour_of_day", "day_of_week", "session_id")


def make_joiners(source: Path, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the events with the joiners' early days dropped, joiners: user_id and join_date)."""
    events = pl.read_parquet(source / "events", hive_partitioning=True)
    users = sorted(events["user_id"].unique().to_list())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=int(len(users) * JOINER_SHARE), replace=False).tolist()
    first_scored = START + timedelta(days=TRAIN_DAYS)
    joiners = pl.DataFrame({"user_id": chosen, "join_date": [
        first_scored + timedelta(days=int(rng.integers(JOIN_SPREAD_DAYS))) for _ in chosen]})
    kept = events.join(joiners, on="user_id", how="left").filter(
        pl.col("join_date").is_null() | (pl.col("event_date").cast(pl.Date) >= pl.col("join_date")))
    return kept.select(RAW_COLUMNS), joiners


def run_variant(work: Path, name: str, with_directory: bool, source: Path) -> dict:
    """Train and backfill on ``work/data``; the directory is imported first when asked."""
    train_end = START + timedelta(days=TRAIN_DAYS - 1)
    first, last = train_end + timedelta(days=1), START + timedelta(days=DAYS - 1)
    if with_directory:
        uba_batch("users", "import", str(source / "directory" / "users.parquet"), "--data-dir", "data", cwd=work)
    began = time.perf_counter()
    uba_batch("train", "--data-dir", "data", "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_DAYS),
         "--model-dir", f"models-{name}", cwd=work)
    uba_batch("backfill", "--start", first.isoformat(), "--end", last.isoformat(), "--data-dir", "data",
         "--model-dir", f"models-{name}", "--output-dir", f"output-{name}", "--in-process", cwd=work)
    return {"seconds": time.perf_counter() - began}


def figures(work: Path, name: str, labels: pl.DataFrame, joiners: pl.DataFrame) -> dict:
    """False-positive rates of joiners' first days and of everyone else on the scored days."""
    scores = pl.read_parquet(work / f"output-{name}" / "scores", hive_partitioning=True).select(
        pl.col("event_id").cast(pl.String), pl.col("user_id").cast(pl.String),
        pl.col("event_date").cast(pl.Date), "is_anomaly")
    scored = scores.join(labels, on="event_id", how="left").with_columns(pl.col("label").fill_null(False)) \
        .join(joiners, on="user_id", how="left")
    early = pl.col("join_date").is_not_null() & (
        (pl.col("event_date") - pl.col("join_date")).dt.total_days() < FIRST_DAYS)
    out: dict = {}
    for group, rows in (("joiners_first_days", scored.filter(early)),
                        ("everyone_else", scored.filter(pl.col("join_date").is_null()))):
        normal = rows.filter(~pl.col("label"))
        anomalous = rows.filter(pl.col("label"))
        out[group] = {"normal_events": normal.height, "false_alerts": int(normal["is_anomaly"].sum()),
                      "fp_rate": normal["is_anomaly"].mean() if normal.height else None,
                      "labelled": anomalous.height,
                      "recall": anomalous["is_anomaly"].mean() if anomalous.height else None}
    user_days = scored.filter(early).select("user_id", "event_date").unique()
    alerts_dir = work / f"output-{name}" / "flagged_users"
    alerted = 0
    if any(alerts_dir.glob("event_date=*/*.parquet")):
        flagged_users = pl.read_parquet(alerts_dir, hive_partitioning=True).select(
            pl.col("user_id").cast(pl.String), pl.col("event_date").cast(pl.Date)).unique()
        alerted = user_days.join(flagged_users, on=["user_id", "event_date"]).height
    out["joiner_user_days"] = user_days.height
    out["joiner_user_day_alerts"] = alerted
    return out


def run_world(work: Path, seed: int, extra: list[str]) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    uba_batch("generate", "--out", "generated", "--users", str(USERS), "--days", str(DAYS), "--start",
         START.isoformat(), "--seed", str(seed), "--directory", *extra, cwd=work)
    events, joiners = make_joiners(work / "generated", seed)
    events.write_parquet(work / "events.parquet")
    uba_batch("ingest", "events.parquet", "--data-dir", "data", cwd=work)
    labels = pl.read_parquet(work / "generated" / "labels" / "labels.parquet").select(
        pl.col("event_id").cast(pl.String), pl.col("is_anomaly").alias("label"))
    result = {"joiners": joiners.height, "variants": {}}
    for name, with_directory in (("no-directory", False), ("directory", True)):
        timing = run_variant(work, name, with_directory, work / "generated")
        result["variants"][name] = {**timing, **figures(work, name, labels, joiners)}
    return result


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(results: list[tuple[str, dict]]) -> str:
    lines = ["# New joiners' false-positive rate, with and without a user directory", "",
             f"`benchmarks/new_joiners.py`: {USERS} users, {DAYS} days, train on {TRAIN_DAYS}, backfill "
             f"{DAYS - TRAIN_DAYS}; {JOINER_SHARE:.0%} of the users join on one of the first "
             f"{JOIN_SPREAD_DAYS} scored days (their earlier events dropped); figures for their first "
             f"{FIRST_DAYS} days. FP rate = alerts on events not labelled anomalous / such events.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info("polars", "scikit-learn").items()), "",
             "| world | variant | joiners' FP rate (alerts / normal events) | joiners' labelled recall "
             "| joiner user-days with a user-day alert | everyone else's FP rate | everyone else's recall "
             "| train+backfill s |",
             "|---|---|---|---|---|---|---|---|"]
    for title, world in results:
        for name, v in world["variants"].items():
            j, e = v["joiners_first_days"], v["everyone_else"]
            lines.append(
                f"| {title} ({world['joiners']} joiners) | {name} | {_rate(j['fp_rate'])} "
                f"({j['false_alerts']} / {j['normal_events']}) | {_rate(j['recall'])} ({j['labelled']}) "
                f"| {v['joiner_user_day_alerts']} / {v['joiner_user_days']} | {_rate(e['fp_rate'])} "
                f"({e['false_alerts']} / {e['normal_events']}) | {_rate(e['recall'])} | {v['seconds']:.0f} |")
    lines += ["", "Target: the joiners' FP rate with the directory is no higher than without it."]
    for title, world in results:
        with_dir = world["variants"]["directory"]["joiners_first_days"]["fp_rate"]
        without = world["variants"]["no-directory"]["joiners_first_days"]["fp_rate"]
        verdict = "met" if with_dir is not None and without is not None and with_dir <= without else "MISSED"
        lines.append(f"- {title}: {_rate(with_dir)} with vs {_rate(without)} without: {verdict}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uba-new-joiners"))
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()
    results = [(title, run_world(args.work / f"seed-{seed}", seed, extra)) for title, seed, extra in WORLDS]
    text = render(results)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
