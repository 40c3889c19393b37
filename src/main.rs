//! The `sessiond` binary: see `sessiond --help`.

use std::time::Duration;

/// mimalloc instead of the system allocator: sled allocates and frees a node copy on every
/// page access, and glibc's malloc took a third of a loaded node's CPU at 1M sessions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the process waits, once a command is done, for background storage work (a
/// snapshot build or a state rebuild, minutes long at scale) before it exits anyway: both
/// are abandoned safely and cleaned up at the next start.
const BACKGROUND_GRACE: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(sessiond::cli::main());
    runtime.shutdown_timeout(BACKGROUND_GRACE);
    code
}
