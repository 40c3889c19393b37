//! The `sessiond` binary: see `sessiond --help`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sessiond::cli::main().await
}
