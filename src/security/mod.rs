//! Cryptographic adapters of domain ports: password hashing (argon2id, legacy bcrypt), the
//! breached-password list, and access-token signing (EdDSA or HS256 JWTs).

pub mod breached;
pub mod jwt;
pub mod keyring;
pub mod password;

/// Creates a directory (and its parents) for Keel's user alone: the data directory and the
/// key directory hold secrets.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}
