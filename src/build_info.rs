//! What this binary was built with: Keel's direct dependencies and the versions Cargo.lock
//! resolved for them (written by `build.rs`).

include!(concat!(env!("OUT_DIR"), "/dependencies.rs"));
