//! Generated protobuf types: the public API and the internal records.

/// The public gRPC API, `sessiond.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("sessiond.v1");
}

/// Internal records: Raft commands and results, state records, log and snapshot encodings.
pub mod internal {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("sessiond.internal.v1");
}

/// The encoded file descriptor set of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sessiond_descriptor");

/// Schema version written into every record this binary creates.
pub const SCHEMA_VERSION: u32 = 1;
