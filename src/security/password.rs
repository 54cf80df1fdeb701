//! argon2id password hashing on dedicated threads, verifying legacy bcrypt hashes too.

use crate::domain::Error;
use crate::domain::ErrorKind;
use crate::domain::error::Result;
use crate::domain::health::HealthProbe;
use crate::domain::password::{PasswordCheck, PasswordHasher};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use crossbeam_channel::{RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// Hashing runs on a fixed set of worker threads, each owning one argon2 memory buffer that it
/// reuses for every hash. At most `workers` hashes run at once, async workers stay free for
/// every other request during a login flood, and memory stays at `workers` × `memory_kib`
/// (allocating 19 MiB per hash on a growing set of threads kept hundreds of MiB resident).
/// A thread that has hashed nothing for `RELEASE_MEMORY_AFTER` gives its buffer back to the
/// system, so an idle server does not hold 19 MiB per thread for its next sign-in.
///
/// At most `queue_limit` hashes wait for a thread: past that a call is refused at once
/// (`SERVER_BUSY`) rather than queued, so a flood of sign-ups or sign-ins is turned away at the
/// door instead of making every later caller wait behind it.
pub struct Argon2Hasher {
    params: Params,
    jobs: crossbeam_channel::Sender<Job>,
    /// Hashes waiting for a thread, for the early check of `admit`.
    waiting: Arc<AtomicUsize>,
    queue_limit: usize,
    /// Hashes (and verifications) done, and the time the threads spent on them.
    done: Arc<AtomicU64>,
    busy_micros: Arc<AtomicU64>,
    /// Calls turned away because the queue was full.
    refused: AtomicU64,
}

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

impl Argon2Hasher {
    pub fn new(settings: Argon2Settings, workers: usize, queue_limit: usize) -> Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|error| {
            Error::invalid_argument("INVALID_ARGON2_PARAMS", format!("argon2 settings: {error}"))
        })?;
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(queue_limit);
        let waiting = Arc::new(AtomicUsize::new(0));
        for index in 0..workers.max(1) {
            let queue = queue.clone();
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("keel-hash-{index}"))
                .spawn(move || {
                    yield_to_request_threads();
                    // Grown on the first hash, reused while hashes keep coming.
                    let mut memory = Vec::new();
                    loop {
                        match queue.recv_timeout(RELEASE_MEMORY_AFTER) {
                            Ok(job) => {
                                waiting.fetch_sub(1, Ordering::Relaxed);
                                job(&mut memory)
                            }
                            Err(RecvTimeoutError::Timeout) if !memory.is_empty() => {
                                memory = Vec::new();
                                return_freed_memory();
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
                .map_err(Error::internal)?;
        }
        Ok(Self {
            params,
            jobs,
            waiting,
            queue_limit,
            done: Arc::new(AtomicU64::new(0)),
            busy_micros: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
        })
    }

    /// Runs `work` on a hashing thread with that thread's memory buffer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (done, busy_micros) = (self.done.clone(), self.busy_micros.clone());
        let job: Job = Box::new(move |memory| {
            let started = std::time::Instant::now();
            let outcome = work(memory);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            busy_micros.fetch_add(micros, Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(outcome);
        });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.jobs.try_send(job) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(match error {
                TrySendError::Full(_) => self.busy(),
                TrySendError::Disconnected(_) => Error::internal("the hashing threads stopped"),
            });
        }
        answer
            .await
            .map_err(|_| Error::internal("a hashing thread dropped its job"))?
    }
}

/// How long a hashing thread keeps its memory buffer with nothing to hash.
const RELEASE_MEMORY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands memory freed by this process back to the system. glibc keeps a freed buffer of this
/// size in its arena (past the first, it no longer maps one apart), so it must be asked to;
/// other allocators unmap it on free.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the calling hashing thread's scheduling priority (nice 10): when hashes and requests
/// compete for the cores, the scheduler gives the request threads about nine tenths, so a
/// flood of sign-ins slows sign-ins, not every other call; idle cores still go to hashing.
fn yield_to_request_threads() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers; on Linux, `who = 0` with PRIO_PROCESS
        // names the calling thread. Failure (no permission) leaves the priority as it was.
        let outcome = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICENESS) };
        if outcome != 0 {
            tracing::debug!("could not lower the hashing threads' priority");
        }
    }
}

#[cfg(target_os = "linux")]
const HASHING_NICENESS: libc::c_int = 10;

impl Argon2Hasher {
    /// The refusal of a call when the queue is full, counted.
    fn busy(&self) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        busy()
    }
}

/// The hashing threads, as `/metrics` reports them: always up while the process is.
#[async_trait::async_trait]
impl HealthProbe for Argon2Hasher {
    fn name(&self) -> &'static str {
        "password_hashing"
    }

    fn backend(&self) -> &'static str {
        "argon2id"
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn figures(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("waiting", self.waiting.load(Ordering::Relaxed) as u64),
            ("done_total", self.done.load(Ordering::Relaxed)),
            (
                "busy_microseconds_total",
                self.busy_micros.load(Ordering::Relaxed),
            ),
            ("refused_total", self.refused.load(Ordering::Relaxed)),
        ]
    }
}

fn busy() -> Error {
    Error {
        retry_after: Some(std::time::Duration::from_secs(1)),
        ..Error::new(
            ErrorKind::ResourceExhausted,
            "SERVER_BUSY",
            "the server is busy checking passwords, try again in a moment",
        )
    }
}

fn is_bcrypt(stored_hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored_hash.starts_with(prefix))
}

fn hash_error(error: impl std::fmt::Display) -> Error {
    Error::internal(format!("password hashing: {error}"))
}

/// argon2id of `password` under `params` and `salt`, in `memory` (grown if the parameters
/// need more than it holds).
fn argon2_output(
    params: Params,
    password: &[u8],
    salt: Salt<'_>,
    output_len: usize,
    memory: &mut Vec<Block>,
) -> Result<Output> {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(hash_error)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    Output::init_with(output_len, |out| {
        argon2
            .hash_password_into_with_memory(password, salt_bytes, out, memory.as_mut_slice())
            .map_err(|_| password_hash::Error::Password)
    })
    .map_err(hash_error)
}

#[async_trait::async_trait]
impl PasswordHasher for Argon2Hasher {
    fn admit(&self) -> Result<()> {
        if self.waiting.load(Ordering::Relaxed) >= self.queue_limit {
            return Err(self.busy());
        }
        Ok(())
    }

    async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        let params = self.params.clone();
        self.run(move |memory| {
            let salt = SaltString::generate(&mut OsRng);
            let output = argon2_output(
                params.clone(),
                password.as_bytes(),
                salt.as_salt(),
                Params::DEFAULT_OUTPUT_LEN,
                memory,
            )?;
            let hash = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(hash_error)?,
                salt: Some(salt.as_salt()),
                hash: Some(output),
            };
            Ok(hash.to_string())
        })
        .await
    }

    async fn verify(&self, password: &str, stored_hash: &str) -> Result<PasswordCheck> {
        let password = password.to_owned();
        let stored_hash = stored_hash.to_owned();
        let params = self.params.clone();
        self.run(move |memory| {
            if is_bcrypt(&stored_hash) {
                let matches = bcrypt::verify(&password, &stored_hash).unwrap_or(false);
                return Ok(if matches {
                    PasswordCheck::MatchNeedsRehash
                } else {
                    PasswordCheck::Mismatch
                });
            }
            let parsed = PasswordHash::new(&stored_hash).map_err(hash_error)?;
            let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
                return Err(Error::internal("stored password hash has no salt or hash"));
            };
            // Verify with the parameters the hash was made with, then ask for a rehash when
            // they differ from the configured ones.
            let stored_params = Params::try_from(&parsed).map_err(hash_error)?;
            let output = argon2_output(
                stored_params.clone(),
                password.as_bytes(),
                salt,
                expected.len(),
                memory,
            )?;
            // `Output` compares in constant time.
            if output != expected {
                return Ok(PasswordCheck::Mismatch);
            }
            let current = parsed.algorithm == Algorithm::Argon2id.ident()
                && stored_params.m_cost() == params.m_cost()
                && stored_params.t_cost() == params.t_cost()
                && stored_params.p_cost() == params.p_cost();
            Ok(if current {
                PasswordCheck::Match
            } else {
                PasswordCheck::MatchNeedsRehash
            })
        })
        .await
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
        let hasher = Argon2Hasher::new(cheap(), 2, 8)?;
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

    /// Hashes made here and by the argon2 crate's own PHC API verify with each other.
    #[tokio::test]
    async fn interoperates_with_standard_phc_hashes() -> Result<()> {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let settings = cheap();
        let hasher = Argon2Hasher::new(settings, 1, 4)?;
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(hash_error)?;
        let standard = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let theirs = standard
            .hash_password(b"Str0ng!Passw0rd", &salt)
            .map_err(hash_error)?
            .to_string();
        assert_eq!(
            hasher.verify("Str0ng!Passw0rd", &theirs).await?,
            PasswordCheck::Match
        );
        let ours = hasher.hash("Str0ng!Passw0rd").await?;
        let parsed = PasswordHash::new(&ours).map_err(hash_error)?;
        assert!(
            standard
                .verify_password(b"Str0ng!Passw0rd", &parsed)
                .is_ok()
        );
        assert!(standard.verify_password(b"wrong", &parsed).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() -> Result<()> {
        let hasher = Argon2Hasher::new(cheap(), 1, 1)?;
        let outcomes = futures_util::future::join_all((0..12).map(|_| hasher.hash("pw"))).await;
        let busy = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Err(error) if error.reason == "SERVER_BUSY"))
            .count();
        assert!(busy >= 1, "nothing was refused");
        assert!(outcomes.iter().any(Result::is_ok), "nothing was hashed");
        assert_eq!(busy + outcomes.iter().filter(|o| o.is_ok()).count(), 12);
        Ok(())
    }

    #[tokio::test]
    async fn changed_parameters_ask_for_a_rehash() -> Result<()> {
        let old = Argon2Hasher::new(cheap(), 1, 4)?.hash("pw").await?;
        let stronger = Argon2Hasher::new(
            Argon2Settings {
                memory_kib: 512,
                ..cheap()
            },
            1,
            4,
        )?;
        assert_eq!(
            stronger.verify("pw", &old).await?,
            PasswordCheck::MatchNeedsRehash
        );
        Ok(())
    }

    #[tokio::test]
    async fn legacy_bcrypt_verifies_and_asks_for_a_rehash() -> Result<()> {
        let hasher = Argon2Hasher::new(cheap(), 1, 4)?;
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
