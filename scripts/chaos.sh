#!/usr/bin/env bash
# Randomized fault schedules against real sessiond processes, with a history checker
# (tests/chaos/). Every schedule comes from a seed; a failure prints the seed, the schedule
# and the smallest history showing the violation, and keeps the nodes' data and logs.
#
#   scripts/chaos.sh                      # the CI set (4 schedules of 20 s)
#   scripts/chaos.sh --schedules 200      # the long run, seeds from a random first seed
#   scripts/chaos.sh --seed 17            # replay one schedule (or --seed 17,42)
#   scripts/chaos.sh --regressions        # the recorded regression schedules
#   options: --first-seed N  --duration SECONDS  --voters 3|5  --release
#            --lease-reads (the nodes answer LINEARIZABLE reads from a leader lease)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=()
test_name=random_fault_schedules_keep_the_invariants
while [[ $# -gt 0 ]]; do
  case "$1" in
    --schedules) export CHAOS_SCHEDULES="$2"; shift 2 ;;
    --first-seed) export CHAOS_FIRST_SEED="$2"; shift 2 ;;
    --seed) export CHAOS_SEED="$2"; shift 2 ;;
    --duration) export CHAOS_DURATION_S="$2"; shift 2 ;;
    --voters) export CHAOS_VOTERS="$2"; shift 2 ;;
    --regressions) test_name=regression_schedules; shift ;;
    --release) profile=(--release); shift ;;
    --lease-reads) export CHAOS_LEASE_READS=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

exec cargo test "${profile[@]}" --test chaos "$test_name" -- --ignored --exact --nocapture
