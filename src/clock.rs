//! The node's wall clock: the only place sessiond reads the time of day.
//!
//! Everything that stamps a command, decides an expiry on the read side or schedules GC asks
//! [`now_ms`]. Tests and the fault harness shift one node's clock with [`set_offset_ms`]
//! (the `clock_offset_ms` setting), which is how a node whose clock runs ahead or behind is
//! simulated without touching the machine's clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// This node's clock, in ms since the Unix epoch (the machine's clock plus the test offset).
pub fn now_ms() -> i64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    wall.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Shifts this process's clock by `offset_ms` (test-only: simulates a skewed node).
pub fn set_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}
