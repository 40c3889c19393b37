#!/usr/bin/env bash
# Backup and restore round trip at scale: runs tests/backup_restore.rs in release with
# SESSIONS (default 100,000) sessions: created concurrently on a running node, backed up with
# `sessiond backup`, restored with `sessiond restore` into a new data directory and served by
# a new one-node cluster, which must hold every session (counts, sampled lookups, revoked ones
# still revoked, a rotation), tell a resuming gateway to resync, and grow with add-learner.
# Prints the test's timings line. The test uses free loopback ports and temporary
# directories, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${SESSIONS:-100000}
SESSIOND_BACKUP_SESSIONS=$sessions cargo test --release --test backup_restore -- --nocapture 2>&1 |
  tee /dev/stderr | grep -E '^backup round trip:|^test result:'
