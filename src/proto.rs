//! Generated protobuf types: the public API, the cluster admin API, the internal records and
//! the node-to-node transport.

pub mod codec;

/// The public gRPC API, `sessiond.v1`: the session authority and cluster administration.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("sessiond.v1");
}

/// Internal records (Raft commands and results, state records, log and snapshot encodings)
/// and the node-to-node Raft transport service.
pub mod internal {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/internal/sessiond.internal.v1.rs"
    ));
}

/// The encoded file descriptor set of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sessiond_descriptor");

/// Schema version written into every record this binary creates.
pub const SCHEMA_VERSION: u32 = 1;
