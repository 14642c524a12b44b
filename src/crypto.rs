//! Keys and sealing: takes plaintext and the repository's master secret, gives content ids and
//! authenticated ciphertext, and back. Pure CPU, no IO: callers run it off the async runtime.
//!
//! * The master secret (64 random bytes) is wrapped per password: AES-256-GCM under a key that
//!   Argon2id derives from the password and a random salt (one `keys/<id>` object each).
//! * From the master secret, HKDF-SHA256 derives the data key, the content-id key and the config
//!   MAC key. Content ids are BLAKE3 keyed with the id key, so ids reveal nothing about content.
//! * Each sealed object is `[version u8][session id 16][nonce 12][AES-256-GCM(ciphertext)+tag]`.
//!   The AES key is HKDF(data key, session id); the nonce counts up within a session, so a nonce
//!   never repeats under one key however many blobs are written (no random-nonce birthday
//!   bound). The additional data binds the object's role and, for blobs, its id: a sealed object
//!   cannot be passed off as another.
//! * The plaintext inside starts with a compression byte (0 raw, 1 zstd).

use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

use crate::format::{BlobId, BlobKind, KdfParams};

const ENVELOPE_VERSION: u8 = 1;
const HEADER: usize = 1 + 16 + 12;
const TAG: usize = 16;
/// Bytes a sealed object adds to its (compressed) plaintext.
pub const OVERHEAD: usize = HEADER + TAG + 1;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the password does not unlock this key")]
    WrongPassword,
    #[error("authentication failed: the object was altered or belongs to another repository")]
    Tampered,
    #[error("malformed sealed object: {0}")]
    Malformed(String),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// What a sealed object is; part of its additional authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Blob(BlobKind, BlobId),
    PackTrailer,
    Index,
    Snapshot,
    Backup,
    ForgetIntent,
    PendingDeletion,
}

impl Role {
    fn aad(&self) -> Vec<u8> {
        let mut v = b"lifeboat/v1/".to_vec();
        match self {
            Role::Blob(kind, id) => {
                v.extend_from_slice(b"blob/");
                v.push(kind.tag());
                v.extend_from_slice(&id.0);
            }
            Role::PackTrailer => v.extend_from_slice(b"pack-trailer"),
            Role::Index => v.extend_from_slice(b"index"),
            Role::Snapshot => v.extend_from_slice(b"snapshot"),
            Role::Backup => v.extend_from_slice(b"backup"),
            Role::ForgetIntent => v.extend_from_slice(b"forget-intent"),
            Role::PendingDeletion => v.extend_from_slice(b"pending-deletion"),
        }
        v
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf32(secret: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let mut out = [0u8; 32];
    prk.expand(&[info], Len(32))
        .expect("32 bytes is a valid HKDF length")
        .fill(&mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES key"))
}

/// The unwrapped keys of an open repository. Shared by every worker (`Sync`).
pub struct Keys {
    master: [u8; 64],
    data_key: [u8; 32],
    id_key: [u8; 32],
    mac_key: [u8; 32],
    session_id: [u8; 16],
    session: LessSafeKey,
    counter: AtomicU64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// A fresh random master secret, for `repo init`.
    pub fn generate() -> Keys {
        let mut master = [0u8; 64];
        rand::thread_rng().fill_bytes(&mut master);
        Keys::from_master(master)
    }

    pub fn from_master(master: [u8; 64]) -> Keys {
        let data_key = hkdf32(&master, b"lifeboat", b"data key v1");
        let id_key = hkdf32(&master, b"lifeboat", b"content id key v1");
        let mac_key = hkdf32(&master, b"lifeboat", b"config mac key v1");
        let mut session_id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut session_id);
        let session = aes_key(&hkdf32(&data_key, &session_id, b"session key v1"));
        Keys {
            master,
            data_key,
            id_key,
            mac_key,
            session_id,
            session,
            counter: AtomicU64::new(0),
        }
    }

    /// The keyed content id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// MAC of the repository config, hex.
    pub fn config_mac(&self, input: &[u8]) -> String {
        blake3::keyed_hash(&self.mac_key, input)
            .to_hex()
            .to_string()
    }

    /// Compresses (when `level` > 0 and it pays: at least 3 % smaller) and seals `plaintext`.
    pub fn seal(&self, role: Role, plaintext: &[u8], level: i32) -> Vec<u8> {
        let compressed = if level > 0 {
            zstd::bulk::compress(plaintext, level)
                .ok()
                .filter(|c| c.len() < plaintext.len() - plaintext.len() / 32)
        } else {
            None
        };
        let (flag, body) = match &compressed {
            Some(c) => (1u8, c.as_slice()),
            None => (0u8, plaintext),
        };
        let mut out = Vec::with_capacity(HEADER + 1 + body.len() + TAG);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.session_id);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.push(flag);
        out.extend_from_slice(body);
        let tag = self
            .session
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(role.aad()),
                &mut out[HEADER..],
            )
            .expect("AES-GCM sealing cannot fail for in-range lengths");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Authenticates, decrypts and decompresses a sealed object. `max_len` bounds the
    /// decompressed size (a damaged length must not exhaust memory).
    pub fn open(&self, role: Role, sealed: &[u8], max_len: usize) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < HEADER + 1 + TAG {
            return Err(CryptoError::Malformed(format!(
                "{} bytes is too short",
                sealed.len()
            )));
        }
        if sealed[0] != ENVELOPE_VERSION {
            return Err(CryptoError::Malformed(format!(
                "unknown envelope version {}",
                sealed[0]
            )));
        }
        let session_id = &sealed[1..17];
        let key = aes_key(&hkdf32(&self.data_key, session_id, b"session key v1"));
        let nonce: [u8; 12] = sealed[17..29].try_into().unwrap();
        let mut buf = sealed[HEADER..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(role.aad()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Tampered)?;
        let (flag, body) = plain
            .split_first()
            .ok_or_else(|| CryptoError::Malformed("empty".into()))?;
        match flag {
            0 => Ok(body.to_vec()),
            1 => zstd::bulk::decompress(body, max_len)
                .map_err(|e| CryptoError::Decompress(e.to_string())),
            f => Err(CryptoError::Malformed(format!("unknown compression {f}"))),
        }
    }

    /// Opens a blob and checks that its plaintext hashes to `id`.
    pub fn open_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        sealed: &[u8],
        raw_len: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        let plain = self.open(Role::Blob(kind, *id), sealed, raw_len.max(1))?;
        if plain.len() != raw_len || self.blob_id(&plain) != *id {
            return Err(CryptoError::Tampered);
        }
        Ok(plain)
    }

    /// Wraps the master secret under `password`: the fields of a key object.
    pub fn wrap(&self, password: &[u8], kdf: KdfParams) -> Result<Wrapped, CryptoError> {
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        let kek = derive_kek(password, &salt, kdf)?;
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buf = self.master.to_vec();
        aes_key(&kek)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"lifeboat/v1/master"),
                &mut buf,
            )
            .expect("sealing 64 bytes cannot fail");
        Ok(Wrapped {
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(buf),
        })
    }

    /// Unwraps a master secret with `password`.
    pub fn unwrap(password: &[u8], kdf: KdfParams, w: &Wrapped) -> Result<Keys, CryptoError> {
        let bad = |what: &str| CryptoError::Malformed(format!("key object: bad {what}"));
        let salt = hex::decode(&w.salt).map_err(|_| bad("salt"))?;
        let nonce: [u8; 12] = hex::decode(&w.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("nonce"))?;
        let mut buf = hex::decode(&w.wrapped).map_err(|_| bad("wrapped secret"))?;
        let kek = derive_kek(password, &salt, kdf)?;
        let plain = aes_key(&kek)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"lifeboat/v1/master"),
                &mut buf,
            )
            .map_err(|_| CryptoError::WrongPassword)?;
        let master: [u8; 64] = plain.try_into().map_err(|_| bad("secret length"))?;
        Ok(Keys::from_master(master))
    }
}

/// The unlocked-key cache's seal (`repository::keycache`): the master secret under a key
/// that a fast KDF (BLAKE3 `derive_key`) makes of the password and a random salt, so that a
/// later command with the same password skips Argon2, and the sealed bytes alone open
/// nothing. `context` (what the entry is bound to: its key object and expiry) is
/// authenticated, so an edited entry fails to open.
impl Keys {
    pub fn seal_for_cache(&self, password: &[u8], context: &[u8]) -> Vec<u8> {
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buf = self.master.to_vec();
        aes_key(&cache_kek(password, &salt))
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(cache_aad(context)),
                &mut buf,
            )
            .expect("sealing 64 bytes cannot fail");
        [&salt[..], &nonce[..], &buf[..]].concat()
    }

    /// Opens what [`Keys::seal_for_cache`] sealed; [`CryptoError::Tampered`] for a wrong
    /// password, another context or altered bytes (the caller falls back to Argon2).
    pub fn open_from_cache(
        password: &[u8],
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Keys, CryptoError> {
        if sealed.len() != 32 + 12 + 64 + 16 {
            return Err(CryptoError::Malformed("key cache entry: bad length".into()));
        }
        let (salt, rest) = sealed.split_at(32);
        let (nonce, body) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("12 bytes");
        let mut buf = body.to_vec();
        let plain = aes_key(&cache_kek(password, salt))
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(cache_aad(context)),
                &mut buf,
            )
            .map_err(|_| CryptoError::Tampered)?;
        let master: [u8; 64] = plain.try_into().map_err(|_| CryptoError::Tampered)?;
        Ok(Keys::from_master(master))
    }
}

fn cache_kek(password: &[u8], salt: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(salt.len() + password.len());
    input.extend_from_slice(salt);
    input.extend_from_slice(password);
    blake3::derive_key("lifeboat v1 unlocked-key cache", &input)
}

fn cache_aad(context: &[u8]) -> Vec<u8> {
    [&b"lifeboat/v1/key-cache/"[..], context].concat()
}

/// The password-dependent fields of a key object.
#[derive(Debug, Clone)]
pub struct Wrapped {
    pub salt: String,
    pub nonce: String,
    pub wrapped: String,
}

fn derive_kek(password: &[u8], salt: &[u8], kdf: KdfParams) -> Result<[u8; 32], CryptoError> {
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = Keys::generate();
        let data = b"hello hello hello hello hello hello hello hello".repeat(100);
        let id = k.blob_id(&data);
        let sealed = k.seal(Role::Blob(BlobKind::Data, id), &data, 1);
        assert!(sealed.len() < data.len(), "compressible data shrinks");
        assert_eq!(
            k.open_blob(BlobKind::Data, &id, &sealed, data.len())
                .unwrap(),
            data
        );
        // The same bytes cannot pass for another role or id.
        assert!(k.open(Role::Index, &sealed, 1 << 20).is_err());
        let other = k.blob_id(b"other");
        assert!(k
            .open_blob(BlobKind::Data, &other, &sealed, data.len())
            .is_err());
        // A flipped bit anywhere is caught.
        for i in [0, 5, 20, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                k.open_blob(BlobKind::Data, &id, &bad, data.len()).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn nonces_never_repeat_within_a_session() {
        let k = Keys::generate();
        let a = k.seal(Role::Index, b"x", 0);
        let b = k.seal(Role::Index, b"x", 0);
        assert_ne!(a[17..29], b[17..29]);
        assert_ne!(a, b);
    }

    #[test]
    fn wrap_unwrap_with_right_and_wrong_password() {
        let k = Keys::generate();
        let w = k.wrap(b"pw", KdfParams::INSECURE_FAST).unwrap();
        let k2 = Keys::unwrap(b"pw", KdfParams::INSECURE_FAST, &w).unwrap();
        assert_eq!(k.blob_id(b"abc"), k2.blob_id(b"abc"));
        assert!(matches!(
            Keys::unwrap(b"nope", KdfParams::INSECURE_FAST, &w),
            Err(CryptoError::WrongPassword)
        ));
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::generate();
        let b = Keys::generate();
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        assert_ne!(a.blob_id(b"same").0, *blake3::hash(b"same").as_bytes());
    }

    #[test]
    fn a_cache_seal_opens_only_with_its_password_and_context() {
        let k = Keys::generate();
        let sealed = k.seal_for_cache(b"pw", b"keys/a|100");
        let back = Keys::open_from_cache(b"pw", b"keys/a|100", &sealed).unwrap();
        assert_eq!(back.master, k.master);
        assert!(Keys::open_from_cache(b"other", b"keys/a|100", &sealed).is_err());
        assert!(Keys::open_from_cache(b"pw", b"keys/a|999", &sealed).is_err());
        let mut bent = sealed.clone();
        bent[50] ^= 1;
        assert!(Keys::open_from_cache(b"pw", b"keys/a|100", &bent).is_err());
        assert!(Keys::open_from_cache(b"pw", b"keys/a|100", &sealed[1..]).is_err());
    }
}
