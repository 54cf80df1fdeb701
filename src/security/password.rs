//! argon2id password hashing on a bounded blocking pool, verifying legacy bcrypt hashes too.

use crate::domain::Error;
use crate::domain::error::Result;
use crate::domain::password::{PasswordCheck, PasswordHasher};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommendation for argon2id.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

pub struct Argon2Hasher {
    params: Params,
    /// At most this many hashes run at once, each on a blocking thread, so that async workers
    /// stay free for every other request during a login flood.
    permits: Arc<Semaphore>,
}

impl Argon2Hasher {
    pub fn new(settings: Argon2Settings, max_concurrent: usize) -> Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|error| {
            Error::invalid_argument("INVALID_ARGON2_PARAMS", format!("argon2 settings: {error}"))
        })?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    async fn run_bounded<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(Error::internal)
    }
}

fn is_bcrypt(stored_hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored_hash.starts_with(prefix))
}

#[async_trait::async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        let params = self.params.clone();
        self.run_bounded(move || {
            let salt = SaltString::generate(&mut OsRng);
            Self::argon2(params)
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| Error::internal(error.to_string()))
        })
        .await?
    }

    async fn verify(&self, password: &str, stored_hash: &str) -> Result<PasswordCheck> {
        let password = password.to_owned();
        let stored_hash = stored_hash.to_owned();
        let params = self.params.clone();
        self.run_bounded(move || {
            if is_bcrypt(&stored_hash) {
                let matches = bcrypt::verify(&password, &stored_hash).unwrap_or(false);
                return Ok(if matches {
                    PasswordCheck::MatchNeedsRehash
                } else {
                    PasswordCheck::Mismatch
                });
            }
            let parsed = PasswordHash::new(&stored_hash)
                .map_err(|error| Error::internal(format!("stored password hash: {error}")))?;
            // Verify with the parameters the hash was made with, then ask for a rehash when
            // they differ from the configured ones.
            let stored_params = Params::try_from(&parsed)
                .map_err(|error| Error::internal(format!("stored password hash: {error}")))?;
            if Self::argon2(stored_params.clone())
                .verify_password(password.as_bytes(), &parsed)
                .is_err()
            {
                return Ok(PasswordCheck::Mismatch);
            }
            let current = parsed.algorithm.as_str() == "argon2id"
                && stored_params.m_cost() == params.m_cost()
                && stored_params.t_cost() == params.t_cost()
                && stored_params.p_cost() == params.p_cost();
            Ok(if current {
                PasswordCheck::Match
            } else {
                PasswordCheck::MatchNeedsRehash
            })
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Settings {
        Argon2Settings {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn argon2_round_trip() -> Result<()> {
        let hasher = Argon2Hasher::new(cheap(), 2)?;
        let hash = hasher.hash("Str0ng!Passw0rd").await?;
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(
            hasher.verify("Str0ng!Passw0rd", &hash).await?,
            PasswordCheck::Match
        );
        assert_eq!(
            hasher.verify("wrong", &hash).await?,
            PasswordCheck::Mismatch
        );
        Ok(())
    }

    #[tokio::test]
    async fn changed_parameters_ask_for_a_rehash() -> Result<()> {
        let old = Argon2Hasher::new(cheap(), 1)?.hash("pw").await?;
        let stronger = Argon2Hasher::new(
            Argon2Settings {
                memory_kib: 512,
                ..cheap()
            },
            1,
        )?;
        assert_eq!(
            stronger.verify("pw", &old).await?,
            PasswordCheck::MatchNeedsRehash
        );
        Ok(())
    }

    #[tokio::test]
    async fn legacy_bcrypt_verifies_and_asks_for_a_rehash() -> Result<()> {
        let hasher = Argon2Hasher::new(cheap(), 1)?;
        let legacy = bcrypt::hash("Legacy1pass", 4).map_err(Error::internal)?;
        assert_eq!(
            hasher.verify("Legacy1pass", &legacy).await?,
            PasswordCheck::MatchNeedsRehash
        );
        assert_eq!(
            hasher.verify("nope", &legacy).await?,
            PasswordCheck::Mismatch
        );
        Ok(())
    }
}
