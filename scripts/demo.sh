#!/usr/bin/env bash
# End-to-end demo on the embedded default: synthetic data -> train -> score one day ->
# show flagged events -> print the next commands to try. It writes to the default paths
# (data/, models/, output/ under the given folder, "." by default), so every command it
# prints works as printed, with no path flags.
#
#   scripts/demo.sh [DIR]        # make demo; DIR defaults to .
#   scripts/demo.sh --clean [DIR]
set -euo pipefail
clean=0
if [ "${1:-}" = "--clean" ]; then clean=1; shift; fi
dir=${1:-.}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
uba="$bin/uba-batch"
marker=.uba-demo
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

# The demo replaces only what an earlier demo made: a data/, models/ or output/ without
# the demo's marker may hold someone's real data, so it is left alone and named.
for part in data models output; do
  if [ -e "$dir/$part" ] && [ ! -e "$dir/$part/$marker" ]; then
    echo "error: $dir/$part exists and was not made by the demo; move it away or run the demo elsewhere (make demo DEMO=demo)" >&2
    exit 1
  fi
done
for part in data models output; do rm -rf "${dir:?}/$part"; done
if [ "$clean" = 1 ]; then echo "removed the demo's data/, models/ and output/ under $dir"; exit 0; fi
mkdir -p "$dir/data" "$dir/models" "$dir/output"
for part in data models output; do echo "made by scripts/demo.sh" > "$dir/$part/$marker"; done

echo "== generate: 500 users, 28 days of synthetic SaaS activity"
"$uba" generate --out "$dir/data" --users 500 --days 28 --start 2026-03-01 --seed 7
echo "== train on 2026-03-01..2026-03-21"
"$uba" train --data-dir "$dir/data" --end-date 2026-03-21 --window-days 21 --model-dir "$dir/models"
echo "== score 2026-03-22 (the default: shards on threads below ray.min_rows_for_ray events, an embedded Ray above)"
"$uba" score --date 2026-03-22 --data-dir "$dir/data" --model-dir "$dir/models" --output-dir "$dir/output"
echo "== flagged events, 2026-03-22 (top 15 by score)"
"$bin/python" - "$dir" <<'PY'
import sys, polars as pl
pl.Config.set_tbl_rows(15); pl.Config.set_fmt_str_lengths(90); pl.Config.set_tbl_width_chars(200)
df = pl.read_parquet(f"{sys.argv[1]}/output/flagged/event_date=2026-03-22/*.parquet")
cols = [c for c in ("user_id", "timestamp", "event_type", "device_type", "anomaly_score", "reasons") if c in df.columns]
print(f"{df.height} flagged events")
top = df.sort("anomaly_score", descending=True).select(cols).head(15)
print(top.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S UTC")))  # seconds, not microseconds
PY

# What to try next, printed exactly as it runs (tests/test_demo.py runs these lines).
echo
echo "== next: try these from $(pwd)"
echo "  source .venv/bin/activate"
if [ "$dir" != "." ]; then
  echo "  export UBA_DATA_DIR=$dir/data UBA_MODEL_DIR=$dir/models UBA_OUTPUT_DIR=$dir/output"
fi
cat <<'NEXT'
  uba-batch report --date 2026-03-22 --out report.html     # the day's alerts and top users; open report.html
  uba-batch backfill --start 2026-03-23 --end 2026-03-28   # score the other six days
  uba-batch monitor --start 2026-03-22 --end 2026-03-28    # drift and alert rate per scored day
  uba-batch evaluate --start 2026-03-22 --end 2026-03-28   # recall and precision against the planted anomalies
  uba-api &                                                # the API on 127.0.0.1:8000 (stop it with: kill %1)
  curl -s --retry 30 --retry-connrefused --retry-delay 1 localhost:8000/predict -H 'content-type: application/json' -d '{"user_id": "u00042", "event_type": "login", "session_duration_sec": 18000, "events_in_session": 190, "timestamp": "2026-03-29T02:00:00Z", "device_type": "desktop"}'
NEXT
