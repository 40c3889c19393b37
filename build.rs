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
    ".sessiond.v1.TouchRequest",
    ".sessiond.v1.AcquireRenewalLeaseRequest",
    ".sessiond.v1.LookupRequest",
    ".sessiond.v1.ValidateAccessTokenRequest",
    ".sessiond.v1.RevokeRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The public API, with its descriptor set for server reflection, and a codec that answers
    // an undecodable request INVALID_ARGUMENT naming the field (src/proto/codec.rs).
    tonic_prost_build::configure()
        .btree_map(".")
        .codec_path("crate::proto::codec::Codec")
        .skip_debug(SECRET_BEARING.iter().copied())
        .file_descriptor_set_path(out_dir.join("sessiond_descriptor.bin"))
        .compile_protos(
            &[
                "proto/sessiond/v1/session.proto",
                "proto/sessiond/v1/cluster.proto",
            ],
            &["proto"],
        )?;
    // Internal records and the node-to-node transport refer to the public enums instead of
    // generating them again. Written to their own directory: this pass would otherwise
    // overwrite the public package's file with the services of the imported public protos.
    let internal_dir = out_dir.join("internal");
    std::fs::create_dir_all(&internal_dir)?;
    tonic_prost_build::configure()
        .btree_map(".")
        .out_dir(&internal_dir)
        .extern_path(".sessiond.v1", "crate::proto::v1")
        .compile_protos(
            &[
                "proto/sessiond/internal/v1/state.proto",
                "proto/sessiond/internal/v1/raft.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
