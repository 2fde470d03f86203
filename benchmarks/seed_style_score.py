"""A nightly scoring script the way a team following the seed write-up would build it:
one pandas process that reads the raw events, rebuilds every user's baseline from the
raw lookback window each night, and scores with scikit-learn.

It is the baseline of the batch speed targets (`score_throughput.py` times `--run` in
its own process next to `uba-batch score --date`). It reads only the contracted storage
layout, `<data-dir>/events/event_date=YYYY-MM-DD/*.parquet`, and uses nothing from `uba`.

The seed's features (../shared/seed/original-system.txt), per event:

- raw fields: `session_duration_sec`, `events_in_session`, `hour_of_day`,
  `day_of_week`, and the event type and device type as integer codes;
- per user, from the raw events of the lookback window (the `--lookback-days` days
  before D; for the fit, the training window itself, as the seed does), merged back:
  mean and standard deviation of the session duration, mean actions per session, mean
  hour of day;
- the deviations from them: duration - user mean, actions - user mean,
  |hour - user mean hour|.

Users without history get the window's overall means. Model: StandardScaler +
IsolationForest (200 trees, contamination 0.02); an event is flagged when its score
(`-score_samples`, higher = more anomalous) reaches the fitted threshold
(`-offset_`, the 98th percentile of the training scores). Output: one Parquet of
scores (`event_id`, `user_id`, `timestamp`, `anomaly_score`, `is_anomaly`,
`threshold`) and a small JSON summary beside it (events, flagged, seconds per step).

    python benchmarks/seed_style_score.py --fit --data-dir DATA --date 2026-03-01 --model seed.pkl
    python benchmarks/seed_style_score.py --run --data-dir DATA --date 2026-03-01 --model seed.pkl \
        --out /tmp/seed/scores.parquet

`--fit` uses the `--train-days` days before D (default 21, like `uba-batch train` in the
benchmark) and a random sample of at most `--fit-rows` of their events; it is setup,
not timed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

RAW = ["session_duration_sec", "events_in_session", "hour_of_day", "day_of_week"]
FEATURES = [*RAW, "event_type_code", "device_code",
            "user_mean_duration", "user_std_duration", "user_mean_actions", "user_mean_hour",
            "duration_deviation", "actions_deviation", "hour_deviation"]
STATS = ["user_mean_duration", "user_std_duration", "user_mean_actions", "user_mean_hour"]


def read_days(data_dir: Path, days: list[date], columns: list[str] | None = None) -> pd.DataFrame:
    """The raw events of ``days`` from the contracted layout (missing days are skipped)."""
    frames = []
    for day in days:
        folder = data_dir / "events" / f"event_date={day.isoformat()}"
        if folder.is_dir():
            frames.extend(pd.read_parquet(part, columns=columns) for part in sorted(folder.glob("*.parquet")))
    if not frames:
        raise SystemExit(f"no events under {data_dir / 'events'} for {days[0]}..{days[-1]}")
    return pd.concat(frames, ignore_index=True)


def user_stats(history: pd.DataFrame) -> pd.DataFrame:
    """Per-user means and spreads from raw events (the seed's user-level features)."""
    grouped = history.groupby("user_id")
    return pd.DataFrame({
        "user_mean_duration": grouped["session_duration_sec"].mean(),
        "user_std_duration": grouped["session_duration_sec"].std(),
        "user_mean_actions": grouped["events_in_session"].mean(),
        "user_mean_hour": grouped["hour_of_day"].mean(),
    })


def seed_features(events: pd.DataFrame, stats: pd.DataFrame, defaults: dict[str, float],
                  event_types: list[str], devices: list[str]) -> pd.DataFrame:
    """The seed's event features: raw fields, the user's stats merged back, deviations."""
    df = events[["user_id", *RAW]].merge(stats, left_on="user_id", right_index=True, how="left")
    df = df.fillna(defaults)
    df["event_type_code"] = pd.Categorical(events["event_type"], categories=event_types).codes
    df["device_code"] = pd.Categorical(events["device_type"], categories=devices).codes
    df["duration_deviation"] = df["session_duration_sec"] - df["user_mean_duration"]
    df["actions_deviation"] = df["events_in_session"] - df["user_mean_actions"]
    df["hour_deviation"] = (df["hour_of_day"] - df["user_mean_hour"]).abs()
    return df[FEATURES]


def fit(data_dir: Path, day: date, model_path: Path, train_days: int, fit_rows: int, seed: int) -> None:
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    days = [day - timedelta(days=i) for i in range(train_days, 0, -1)]
    events = read_days(data_dir, days)
    stats = user_stats(events)
    defaults = stats.mean().to_dict()
    event_types = sorted(events["event_type"].unique())
    devices = sorted(events["device_type"].unique())
    features = seed_features(events, stats, defaults, event_types, devices)
    if len(features) > fit_rows:
        features = features.sample(n=fit_rows, random_state=seed)
    scaler = StandardScaler()
    X = scaler.fit_transform(features.to_numpy(dtype=np.float64))
    forest = IsolationForest(n_estimators=200, contamination=0.02, random_state=seed).fit(X)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with open(model_path, "wb") as handle:
        pickle.dump({"scaler": scaler, "forest": forest, "threshold": float(-forest.offset_),
                     "event_types": event_types, "devices": devices}, handle)
    print(f"fitted on {len(features):,} events of {days[0]}..{days[-1]}; threshold {-forest.offset_:.4f}")


def run(data_dir: Path, day: date, model_path: Path, out: Path, lookback_days: int) -> None:
    """The nightly job: read, rebuild baselines from raw history, features, score, write."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    with open(model_path, "rb") as handle:
        model = pickle.load(handle)
    lap("load_model")
    lookback = [day - timedelta(days=i) for i in range(lookback_days, 0, -1)]
    history = read_days(data_dir, lookback, ["user_id", "session_duration_sec", "events_in_session",
                                             "hour_of_day"])
    events = read_days(data_dir, [day])
    lap("read")
    stats = user_stats(history)
    defaults = stats.mean().to_dict()
    del history
    lap("baselines")
    features = seed_features(events, stats, defaults, model["event_types"], model["devices"])
    lap("features")
    scores = -model["forest"].score_samples(model["scaler"].transform(features.to_numpy(dtype=np.float64)))
    lap("scoring")
    result = pd.DataFrame({
        "event_id": events["event_id"], "user_id": events["user_id"], "timestamp": events["timestamp"],
        "anomaly_score": scores, "is_anomaly": scores >= model["threshold"], "threshold": model["threshold"],
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_parquet(out, index=False)
    lap("write")
    summary = {"events": len(result), "flagged": int(result["is_anomaly"].sum()),
               "users_in_lookback": len(stats), "timings_sec": seconds}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fit", action="store_true", help="fit the scaler and forest (setup, not timed)")
    mode.add_argument("--run", action="store_true", help="score day --date (the timed nightly job)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--date", type=date.fromisoformat, required=True, help="the day D to score")
    parser.add_argument("--model", type=Path, required=True, help="pickle written by --fit, read by --run")
    parser.add_argument("--out", type=Path, help="Parquet of scores (--run)")
    parser.add_argument("--lookback-days", type=int, default=28)
    parser.add_argument("--train-days", type=int, default=21)
    parser.add_argument("--fit-rows", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.fit:
        fit(args.data_dir, args.date, args.model, args.train_days, args.fit_rows, args.seed)
    else:
        if args.out is None:
            parser.error("--run needs --out")
        run(args.data_dir, args.date, args.model, args.out, args.lookback_days)


if __name__ == "__main__":
    main()
