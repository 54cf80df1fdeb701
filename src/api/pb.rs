//! Code generated from `proto/` by `build.rs` (prost + tonic), and the descriptor set that the
//! transcoder, the OpenAPI generator and reflection read.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/keel_protos.rs"));

/// The encoded `FileDescriptorSet` of every proto, with source info (comments).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keel_descriptor.bin"));
