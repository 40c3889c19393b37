//! The `sessiond` binary: see `sessiond --help`.

/// mimalloc instead of the system allocator: sled allocates and frees a node copy on every
/// page access, and glibc's malloc took a third of a loaded node's CPU at 1M sessions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sessiond::cli::main().await
}
