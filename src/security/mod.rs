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

/// Creates the SQLite file readable by Keel's user alone before SQLite opens it (SQLite gives
/// its `-wal` and `-shm` files the same mode).
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(|_| ())
}
