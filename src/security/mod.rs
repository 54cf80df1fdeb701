//! Cryptographic adapters of domain ports: password hashing (argon2id, legacy bcrypt) and
//! access-token signing (EdDSA or HS256 JWTs).

pub mod jwt;
pub mod keyring;
pub mod password;
