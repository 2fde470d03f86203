#!/usr/bin/env bash
# Score one day on a temporary Ray cluster (KubeRay RayJob) instead of the nightly
# CronJob's single pod: for days too large for one pod, or a fast backfill of one day.
#
#   scripts/k8s-rayjob-score.sh OVERLAY DATE [--print]
#
# OVERLAY is dev or prod (k8s/overlays/OVERLAY/rayjob); DATE is YYYY-MM-DD. Renders the
# RayJob with kustomize, writes the date into its name and its `--date`, and applies it
# (the ConfigMap it carries is the overlay's own, unchanged). --print writes the
# manifests to stdout instead of applying them. KUBECTL overrides the kubectl binary.
set -euo pipefail
usage() { echo "usage: $0 OVERLAY DATE [--print]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
overlay=$1 day=$2 print=0
if [ $# -eq 3 ]; then [ "$3" = --print ] || usage; print=1; fi
kubectl=${KUBECTL:-kubectl}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/k8s/overlays/$overlay/rayjob
[ -f "$dir/kustomization.yaml" ] || { echo "error: no RayJob build for overlay '$overlay' ($dir)" >&2; exit 1; }
if ! [[ $day =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || [ "$(date -u -d "$day" +%F 2>/dev/null)" != "$day" ]; then
  echo "error: DATE must be a calendar date as YYYY-MM-DD, got '$day'" >&2
  exit 1
fi

# Only the RayJob's name and its entrypoint's --date carry the placeholder.
manifests=$("$kubectl" kustomize "$dir" | sed -E \
  -e "s/^([[:space:]]*name: uba-score-)yyyy-mm-dd\$/\\1$day/" \
  -e "/^[[:space:]]*entrypoint:/s/--date yyyy-mm-dd/--date $day/")
if grep -q 'yyyy-mm-dd' <<<"$manifests"; then
  echo "error: a yyyy-mm-dd placeholder is left in the rendered RayJob" >&2
  exit 1
fi
if [ "$print" = 1 ]; then
  printf '%s\n' "$manifests"
  exit 0
fi
name=uba-score-$day
if "$kubectl" -n uba get rayjob "$name" >/dev/null 2>&1; then
  echo "error: RayJob $name exists already; delete it to run the day again: $kubectl -n uba delete rayjob $name" >&2
  exit 1
fi
printf '%s\n' "$manifests" | "$kubectl" apply -f -
echo "follow it with: $kubectl -n uba get rayjob $name -w"
echo "driver logs:    $kubectl -n uba logs -f job/$name"
