//! Room passwords, kept only as salted argon2id hashes.
//!
//! The first joiner of an empty room seals it with its password; later joiners must open the
//! seal. A seal is a PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`): it carries its own
//! salt and parameters, so a cluster node can check a password against a seal another node
//! made. Hashing is deliberately slow, so it runs on tokio's blocking pool, never on the async
//! workers, and no more hashes run at once than there are cores: a storm of locked joins then
//! queues instead of spreading over dozens of pool threads, each keeping its own 4 MiB blocks
//! in its own malloc arena (measured: 3.2–3.6 GB of RSS for 8,000 unbounded hashes). argon2's
//! verification compares the hashes in constant time.

use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::protocol::Password;

/// argon2id with 4 MiB of memory and one pass: 3.6–4.9 ms per hash on this project's 2-core
/// test machine (`cargo bench --bench password-cost`), so a join pays a few milliseconds.
/// Guessing online is held back by the wrong-password limits, and a stolen seal still costs
/// an attacker 4 MiB and a pass per guess.
const MEMORY_KIB: u32 = 4096;
const PASSES: u32 = 1;
const LANES: u32 = 1;
const SALT_BYTES: usize = 16;

/// A room's password, sealed. Equality compares the PHC strings (public data, not secrets):
/// it tells whether a room still has the lock a joiner opened.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomLock(Arc<str>);

impl std::fmt::Debug for RoomLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomLock(..)")
    }
}

/// Hashing failed; with fixed, valid parameters this means the blocking pool is gone.
#[derive(Debug)]
pub struct SealError(pub String);

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes that may run at once: one per core.
static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// Runs `hash` on the blocking pool once a hashing slot is free.
async fn hash_off_the_workers<T: Send + 'static>(
    hash: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SealError> {
    let _slot = HASHING
        .acquire()
        .await
        .map_err(|e| SealError(e.to_string()))?;
    tokio::task::spawn_blocking(hash)
        .await
        .map_err(|e| SealError(e.to_string()))
}

fn hasher() -> Argon2<'static> {
    // The constants are valid argon2 parameters; `Params::DEFAULT` is only a fallback the
    // compiler cannot rule out.
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl RoomLock {
    /// A lock as stored (cluster mode reads it back from Redis).
    pub fn from_stored(text: &str) -> Option<RoomLock> {
        PasswordHash::new(text).ok()?;
        Some(RoomLock(text.into()))
    }

    pub fn as_stored(&self) -> &str {
        &self.0
    }

    /// Seals `password` with a fresh random salt.
    pub async fn seal(password: &Password) -> Result<RoomLock, SealError> {
        let secret = password.as_bytes().to_vec();
        let mut salt = [0u8; SALT_BYTES];
        rand::fill(&mut salt[..]);
        let phc = hash_off_the_workers(move || {
            let salt = SaltString::encode_b64(&salt).map_err(|e| SealError(e.to_string()))?;
            hasher()
                .hash_password(&secret, &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| SealError(e.to_string()))
        })
        .await??;
        Ok(RoomLock(phc.into()))
    }

    /// Whether `password` opens this lock.
    pub async fn opens(&self, password: &Password) -> bool {
        let secret = password.as_bytes().to_vec();
        let phc = Arc::clone(&self.0);
        hash_off_the_workers(move || {
            PasswordHash::new(&phc)
                .is_ok_and(|hash| hasher().verify_password(&secret, &hash).is_ok())
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn password(text: &str) -> Password {
        let json = format!(r#"{{"roomId":"r","password":"{text}"}}"#);
        let raw = RawValue::from_string(json).expect("test json");
        crate::protocol::RoomCheck::parse(Some(&raw))
            .expect("valid")
            .password
            .expect("not blank")
    }

    #[tokio::test]
    async fn a_seal_opens_only_with_its_password_and_never_holds_it() {
        let lock = RoomLock::seal(&password("correct horse"))
            .await
            .expect("sealed");
        assert!(
            lock.as_stored()
                .starts_with("$argon2id$v=19$m=4096,t=1,p=1$")
        );
        assert!(!lock.as_stored().contains("correct"));
        assert!(lock.opens(&password("correct horse")).await);
        assert!(!lock.opens(&password("correct horse!")).await);
        let again = RoomLock::seal(&password("correct horse"))
            .await
            .expect("sealed");
        assert_ne!(lock, again, "every seal has its own salt");
        let stored = RoomLock::from_stored(lock.as_stored()).expect("parses");
        assert!(stored.opens(&password("correct horse")).await);
        assert!(RoomLock::from_stored("plain text").is_none());
    }

    #[tokio::test]
    async fn a_lock_prints_without_its_hash_and_a_seal_error_prints_its_cause() {
        let lock = RoomLock::seal(&password("correct horse"))
            .await
            .expect("sealed");
        assert_eq!(format!("{lock:?}"), "RoomLock(..)");
        assert_eq!(
            SealError("blocking pool gone".into()).to_string(),
            "blocking pool gone"
        );
    }
}
