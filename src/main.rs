//! The `sessiond` binary: see `sessiond --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sessiond::cli::main().await
}
