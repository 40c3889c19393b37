//! Compiles the protobuf API and internal records with a vendored `protoc`, so that no system
//! protoc is needed. Maps are generated as `BTreeMap` so that encoding is deterministic (the
//! state machine must produce byte-identical records on every replica).

use std::path::PathBuf;

/// Messages that carry raw tokens or idempotency keys: their `Debug` is written by hand in
/// `src/api/redact.rs` so that a stray `{:?}` cannot leak a secret.
const SECRET_BEARING: &[&str] = &[
    ".sessiond.v1.CreateSessionRequest",
    ".sessiond.v1.CreateSessionResponse",
    ".sessiond.v1.RotateRequest",
    ".sessiond.v1.RotateResponse",
    ".sessiond.v1.LookupRequest",
    ".sessiond.v1.ValidateAccessTokenRequest",
    ".sessiond.v1.RevokeRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The public API, with its descriptor set for server reflection.
    tonic_prost_build::configure()
        .btree_map(".")
        .skip_debug(SECRET_BEARING.iter().copied())
        .file_descriptor_set_path(out_dir.join("sessiond_descriptor.bin"))
        .compile_protos(&["proto/sessiond/v1/session.proto"], &["proto"])?;
    // Internal records refer to the public enums instead of generating them again.
    tonic_prost_build::configure()
        .btree_map(".")
        .extern_path(".sessiond.v1", "crate::proto::v1")
        .build_client(false)
        .build_server(false)
        .compile_protos(&["proto/sessiond/internal/v1/state.proto"], &["proto"])?;
    Ok(())
}
