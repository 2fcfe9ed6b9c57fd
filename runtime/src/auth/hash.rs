//! One stored password: a hash in one of the formats below, or plaintext.
//!
//! | prefix | scheme | written by |
//! |---|---|---|
//! | `$argon2id$`, `$argon2i$`, `$argon2d$` | Argon2 PHC string | `tidemq passwd`, Mosquitto 2.1, libargon2 |
//! | `$pbkdf2-sha512$` | PBKDF2-HMAC-SHA512, PHC (`i=N,l=L`) or passlib (`N`, `.` for `+`) | RustCrypto, passlib |
//! | `$7$` | PBKDF2-HMAC-SHA512, `$7$iterations$salt$hash` | `mosquitto_passwd` 2.0 |
//! | `$6$` | SHA-512(password ‖ salt), `$6$salt$hash` | `mosquitto_passwd` ≤ 1.6, `-H sha512` |
//! | anything not starting with `$` | plaintext | NanoMQ's password map |
//!
//! Every comparison is constant-time. Costs are capped when a hash is parsed, so that one bad
//! entry cannot make each CONNECT allocate gigabytes or spin for minutes.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// The longest password checked (MQTT binary data); a longer one never matches.
pub const MAX_PASSWORD_LEN: usize = 65_535;
/// PBKDF2 iterations accepted (about 3 s per verify here; Mosquitto 2.1 uses 210,000).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Argon2 memory accepted, in KiB (1 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Argon2 memory × passes accepted, in KiB (about 2 s per verify here).
pub const MAX_ARGON2_WORK: u64 = 1 << 22;
/// Argon2 lanes accepted (they run one after another here).
pub const MAX_ARGON2_LANES: u32 = 16;

/// Mosquitto's salts are 12 bytes (≤ 2.0) or 64 bytes (2.1), its digests 64.
const MOSQ_SALT_LENS: [usize; 2] = [12, 64];
const SHA512_LEN: usize = 64;

/// New hashes: OWASP's argon2id minimum (m = 19 MiB, t = 2, p = 1), 16-byte salt, 32-byte hash.
const NEW_M_COST: u32 = 19 * 1024;
const NEW_T_COST: u32 = 2;
const NEW_P_COST: u32 = 1;
const NEW_SALT_LEN: usize = 16;
const NEW_HASH_LEN: usize = 32;

/// Standard alphabet, padding optional: PHC strings have none, Mosquitto writes it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a password is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Plaintext,
    /// Mosquitto `$6$`.
    Sha512,
    /// Mosquitto `$7$` or `$pbkdf2-sha512$`.
    Pbkdf2Sha512,
    Argon2id,
    Argon2i,
    Argon2d,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Plaintext => "plaintext",
            Scheme::Sha512 => "salted SHA-512 ($6$)",
            Scheme::Pbkdf2Sha512 => "PBKDF2-SHA512",
            Scheme::Argon2id => "argon2id",
            Scheme::Argon2i => "argon2i",
            Scheme::Argon2d => "argon2d",
        })
    }
}

/// What one verify costs: iterations (passes) and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub iterations: u32,
    pub memory_kib: u32,
}

/// Why a stored value is not a usable hash. The text never repeats the hash itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashError(String);

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HashError {}

fn err(message: impl Into<String>) -> HashError {
    HashError(message.into())
}

/// A parsed, ready-to-verify stored password. `Debug` shows the scheme and cost only.
#[derive(Clone)]
pub struct PasswordHash(Inner);

#[derive(Clone)]
enum Inner {
    Plain(Vec<u8>),
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Argon2 {
        algorithm: Algorithm,
        version: Version,
        params: Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cost = self.cost();
        f.debug_struct("PasswordHash")
            .field("scheme", &self.scheme())
            .field("iterations", &cost.iterations)
            .field("memory_kib", &cost.memory_kib)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Reads a stored value: a hash if it starts with `$`, plaintext otherwise. An unknown `$`
    /// scheme, bad base64, a wrong length or a cost above the caps is an error.
    pub fn parse(stored: &str) -> Result<PasswordHash, HashError> {
        if stored.is_empty() {
            return Err(err("empty password"));
        }
        let Some(rest) = stored.strip_prefix('$') else {
            return Ok(PasswordHash(Inner::Plain(stored.as_bytes().to_vec())));
        };
        let (id, fields) = rest.split_once('$').unwrap_or((rest, ""));
        let inner = match id {
            "6" => parse_mosq_sha512(fields)?,
            "7" => parse_mosq_pbkdf2(fields)?,
            "pbkdf2-sha512" => parse_pbkdf2(fields)?,
            "argon2id" => parse_argon2(Algorithm::Argon2id, fields)?,
            "argon2i" => parse_argon2(Algorithm::Argon2i, fields)?,
            "argon2d" => parse_argon2(Algorithm::Argon2d, fields)?,
            _ => {
                let shown: String = id.chars().take(24).collect();
                return Err(err(format!(
                    "unknown hash scheme \"${shown}$\" (known: $argon2id$, $argon2i$, $argon2d$, \
                     $pbkdf2-sha512$, $7$, $6$; a plaintext password must not start with $)"
                )));
            }
        };
        Ok(PasswordHash(inner))
    }

    pub fn scheme(&self) -> Scheme {
        match &self.0 {
            Inner::Plain(_) => Scheme::Plaintext,
            Inner::Sha512 { .. } => Scheme::Sha512,
            Inner::Pbkdf2 { .. } => Scheme::Pbkdf2Sha512,
            Inner::Argon2 { algorithm, .. } => match algorithm {
                Algorithm::Argon2id => Scheme::Argon2id,
                Algorithm::Argon2i => Scheme::Argon2i,
                Algorithm::Argon2d => Scheme::Argon2d,
            },
        }
    }

    /// Plaintext entries work but deserve a warning at start.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.0, Inner::Plain(_))
    }

    pub fn cost(&self) -> Cost {
        match &self.0 {
            Inner::Plain(_) | Inner::Sha512 { .. } => Cost {
                iterations: 1,
                memory_kib: 0,
            },
            Inner::Pbkdf2 { iterations, .. } => Cost {
                iterations: *iterations,
                memory_kib: 0,
            },
            Inner::Argon2 { params, .. } => Cost {
                iterations: params.t_cost(),
                memory_kib: params.m_cost(),
            },
        }
    }

    /// Does `password` match? Constant-time in the comparison; the hashing itself takes what
    /// the scheme costs. Blocking: run it off the async workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match &self.0 {
            // Digests first, so that the comparison does not reveal the stored length.
            Inner::Plain(stored) => Sha512::digest(stored)
                .as_slice()
                .ct_eq(Sha512::digest(password).as_slice())
                .into(),
            Inner::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                d.finalize().as_slice().ct_eq(hash).into()
            }
            Inner::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Inner::Argon2 {
                algorithm,
                version,
                params,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                let argon = Argon2::new(*algorithm, *version, params.clone());
                match argon.hash_password_into(password, salt, &mut out) {
                    Ok(()) => out.ct_eq(hash).into(),
                    Err(_) => false,
                }
            }
        }
    }
}

/// Runs an argon2id verify at [`hash_argon2id`]'s cost and returns false: for a user name that
/// is not in the file, so that its answer takes as long as a wrong password.
pub fn dummy_verify(password: &[u8]) -> bool {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$\
                         AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    match PasswordHash::parse(DUMMY) {
        Ok(h) => {
            let _ = h.verify(password);
            false
        }
        Err(_) => false,
    }
}

/// A new argon2id PHC string for `password` (m = 19 MiB, t = 2, p = 1, random 16-byte salt).
pub fn hash_argon2id(password: &[u8]) -> Result<String, HashError> {
    let mut salt = [0u8; NEW_SALT_LEN];
    getrandom::getrandom(&mut salt).map_err(|e| err(format!("no random salt: {e}")))?;
    hash_argon2id_with_salt(password, &salt)
}

pub(crate) fn hash_argon2id_with_salt(password: &[u8], salt: &[u8]) -> Result<String, HashError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(err(format!(
            "password longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    let params = Params::new(NEW_M_COST, NEW_T_COST, NEW_P_COST, Some(NEW_HASH_LEN))
        .map_err(|e| err(format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; NEW_HASH_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| err(format!("argon2: {e}")))?;
    Ok(format!(
        "$argon2id$v=19$m={NEW_M_COST},t={NEW_T_COST},p={NEW_P_COST}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

fn b64(field: &str, what: &str) -> Result<Vec<u8>, HashError> {
    if field.is_empty() {
        return Err(err(format!("{what} is missing")));
    }
    B64.decode(field)
        .map_err(|e| err(format!("{what} is not valid base64: {e}")))
}

/// `$`-separated fields, exactly `n` of them, none empty.
fn fields<'a, const N: usize>(text: &'a str, layout: &str) -> Result<[&'a str; N], HashError> {
    let mut out = [""; N];
    let mut parts = text.split('$');
    for slot in &mut out {
        match parts.next() {
            Some(p) if !p.is_empty() => *slot = p,
            _ => return Err(err(format!("expected {layout}"))),
        }
    }
    if parts.next().is_some() {
        return Err(err(format!("expected {layout}, found more fields")));
    }
    Ok(out)
}

fn mosq_salt(field: &str) -> Result<Vec<u8>, HashError> {
    let salt = b64(field, "salt")?;
    if !MOSQ_SALT_LENS.contains(&salt.len()) {
        return Err(err(format!(
            "salt is {} bytes; Mosquitto writes 12 or 64",
            salt.len()
        )));
    }
    Ok(salt)
}

fn digest_of_len(field: &str, len: usize) -> Result<Vec<u8>, HashError> {
    let hash = b64(field, "hash")?;
    if hash.len() != len {
        return Err(err(format!("hash is {} bytes, expected {len}", hash.len())));
    }
    Ok(hash)
}

fn parse_mosq_sha512(text: &str) -> Result<Inner, HashError> {
    let [salt, hash] = fields::<2>(text, "$6$salt$hash")?;
    Ok(Inner::Sha512 {
        salt: mosq_salt(salt)?,
        hash: digest_of_len(hash, SHA512_LEN)?,
    })
}

fn iterations(text: &str) -> Result<u32, HashError> {
    let n: u32 = text
        .parse()
        .map_err(|_| err(format!("iteration count {text:?} is not a number")))?;
    if n == 0 {
        return Err(err("iteration count is 0"));
    }
    if n > MAX_PBKDF2_ITERATIONS {
        return Err(err(format!(
            "iteration count {n} is above the limit of {MAX_PBKDF2_ITERATIONS}"
        )));
    }
    Ok(n)
}

fn parse_mosq_pbkdf2(text: &str) -> Result<Inner, HashError> {
    let [iters, salt, hash] = fields::<3>(text, "$7$iterations$salt$hash")?;
    Ok(Inner::Pbkdf2 {
        iterations: iterations(iters)?,
        salt: mosq_salt(salt)?,
        hash: digest_of_len(hash, SHA512_LEN)?,
    })
}

/// PHC (`i=N[,l=L]`, B64) or passlib (`N`, B64 with `.` for `+`).
fn parse_pbkdf2(text: &str) -> Result<Inner, HashError> {
    let [params, salt, hash] = fields::<3>(text, "$pbkdf2-sha512$i=N,l=L$salt$hash")?;
    let mut rounds = None;
    let mut out_len = None;
    if params.bytes().all(|b| b.is_ascii_digit()) {
        rounds = Some(iterations(params)?);
    } else {
        for p in params.split(',') {
            match p.split_once('=') {
                Some(("i", v)) if rounds.is_none() => rounds = Some(iterations(v)?),
                Some(("l", v)) if out_len.is_none() => {
                    out_len = Some(
                        v.parse::<usize>()
                            .map_err(|_| err(format!("output length {v:?} is not a number")))?,
                    );
                }
                _ => {
                    let shown: String = p.chars().take(24).collect();
                    return Err(err(format!(
                        "unexpected parameter {shown:?} (expected i=N and optionally l=L)"
                    )));
                }
            }
        }
    }
    let iterations = rounds.ok_or_else(|| err("iteration count i=N is missing"))?;
    let salt = b64(&salt.replace('.', "+"), "salt")?;
    let hash = b64(&hash.replace('.', "+"), "hash")?;
    if !(8..=128).contains(&salt.len()) {
        return Err(err(format!(
            "salt is {} bytes, expected 8 to 128",
            salt.len()
        )));
    }
    if !(16..=SHA512_LEN).contains(&hash.len()) {
        return Err(err(format!(
            "hash is {} bytes, expected 16 to {SHA512_LEN}",
            hash.len()
        )));
    }
    if out_len.is_some_and(|l| l != hash.len()) {
        return Err(err("l= does not match the hash length"));
    }
    Ok(Inner::Pbkdf2 {
        iterations,
        salt,
        hash,
    })
}

/// `[v=19$]m=M,t=T,p=P$salt$hash`; without `v=` the version is 0x10, as libargon2 reads it.
fn parse_argon2(algorithm: Algorithm, text: &str) -> Result<Inner, HashError> {
    let (version, text) = match text.strip_prefix("v=") {
        Some(rest) => {
            let (v, rest) = rest.split_once('$').unwrap_or((rest, ""));
            let version = match v {
                "19" => Version::V0x13,
                "16" => Version::V0x10,
                _ => {
                    let shown: String = v.chars().take(12).collect();
                    return Err(err(format!("argon2 version {shown:?} (expected 19 or 16)")));
                }
            };
            (version, rest)
        }
        None => (Version::V0x10, text),
    };
    let [params, salt, hash] = fields::<3>(text, "$argon2id$v=19$m=M,t=T,p=P$salt$hash")?;
    let (mut m, mut t, mut p) = (None, None, None);
    for kv in params.split(',') {
        let (slot, value) = match kv.split_once('=') {
            Some(("m", v)) if m.is_none() => (&mut m, v),
            Some(("t", v)) if t.is_none() => (&mut t, v),
            Some(("p", v)) if p.is_none() => (&mut p, v),
            _ => {
                let shown: String = kv.chars().take(24).collect();
                return Err(err(format!(
                    "unexpected argon2 parameter {shown:?} (expected m=, t=, p= once each)"
                )));
            }
        };
        *slot = Some(value.parse::<u32>().map_err(|_| {
            let shown: String = kv.chars().take(24).collect();
            err(format!("argon2 parameter {shown:?} is not a number"))
        })?);
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err(err("argon2 parameters m=, t= and p= are all required"));
    };
    if m > MAX_ARGON2_MEMORY_KIB || u64::from(m) * u64::from(t) > MAX_ARGON2_WORK {
        return Err(err(format!(
            "argon2 cost m={m},t={t} is above the limit (m ≤ {MAX_ARGON2_MEMORY_KIB} KiB, \
             m×t ≤ {MAX_ARGON2_WORK})"
        )));
    }
    if p > MAX_ARGON2_LANES {
        return Err(err(format!(
            "argon2 p={p} is above the limit of {MAX_ARGON2_LANES}"
        )));
    }
    let salt = b64(salt, "salt")?;
    let hash = b64(hash, "hash")?;
    if !(8..=256).contains(&salt.len()) {
        return Err(err(format!(
            "salt is {} bytes, expected 8 to 256",
            salt.len()
        )));
    }
    if !(4..=256).contains(&hash.len()) {
        return Err(err(format!(
            "hash is {} bytes, expected 4 to 256",
            hash.len()
        )));
    }
    let params = Params::new(m, t, p, Some(hash.len()))
        .map_err(|e| err(format!("argon2 parameters m={m},t={t},p={p}: {e}")))?;
    Ok(Inner::Argon2 {
        algorithm,
        version,
        params,
        salt,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from independent tools: mosquitto_passwd 2.0.11, the argon2 CLI (libargon2),
    // and Python's hashlib (OpenSSL) for PBKDF2.
    const MOSQ_7: &str = "$7$101$GEge2aUsyT6WCxY+$avFlvfjesMzbsqibO4LwcEJTdimrknTLp9VdrEkqBYOhz+KjitG8A0BVga0hXf2OBC9tZ4oDC1xIGnAcEdzWVw==";
    const MOSQ_6: &str = "$6$viK7oio9kIv3NQxU$XiJL2JA3uftr9yslOv7yDbEbXvCwAByqAwMyTyK7LG6acghYI+yj0djaU+8Nkb430E9oUC7tuW/c4ig7K4aGsg==";

    fn ok(stored: &str, good: &[u8], scheme: Scheme) {
        let h = PasswordHash::parse(stored).unwrap();
        assert_eq!(h.scheme(), scheme, "{stored}");
        assert!(h.verify(good), "{stored} should accept its password");
        assert!(!h.verify(b"wrong"), "{stored} accepted a wrong password");
        assert!(!h.verify(b""), "{stored} accepted an empty password");
        let mut longer = good.to_vec();
        longer.push(b'x');
        assert!(!h.verify(&longer));
    }

    fn bad(stored: &str, needle: &str) {
        let e = PasswordHash::parse(stored).unwrap_err().to_string();
        assert!(e.contains(needle), "{stored}: {e:?} lacks {needle:?}");
    }

    #[test]
    fn mosquitto_pbkdf2_and_sha512() {
        ok(MOSQ_7, b"secret", Scheme::Pbkdf2Sha512);
        assert_eq!(
            PasswordHash::parse(MOSQ_7).unwrap().cost(),
            Cost {
                iterations: 101,
                memory_kib: 0
            }
        );
        ok(MOSQ_6, b"hunter2", Scheme::Sha512);
        // Padding is optional.
        ok(MOSQ_6.trim_end_matches('='), b"hunter2", Scheme::Sha512);
    }

    #[test]
    fn argon2_vectors() {
        // The reference implementation's own test vector.
        ok(
            "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            b"password",
            Scheme::Argon2id,
        );
        ok(
            "$argon2id$v=19$m=8,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$EJEyw4srvdOsFA84oT1NzKbbK5ZIS450qVE9dChtV0IiHMTCtH6gbp9ZDnuT4JcYmorT3JX7vPutiNVYgsaWpA",
            b"hunter2",
            Scheme::Argon2id,
        );
        // 64-byte salt and hash, as Mosquitto 2.1 writes them.
        ok(
            "$argon2id$v=19$m=64,t=1,p=1$U1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTUw$jtjrqgZemrR2Y4z8AtIGx6GiK8YbXYgNOjgeowODkEV9YDtYtI1t3+ds8nKMr8a7/DdQ/H4DM89VSYR8fHahzg",
            b"secret",
            Scheme::Argon2id,
        );
        ok(
            "$argon2i$v=19$m=16,t=3,p=2$c2FsdHNhbHRzYWx0$/t0chsOgKzQshEsa2ivKtIprLV5mUQKjnyrkeCWXvLY",
            "pässword".as_bytes(),
            Scheme::Argon2i,
        );
        ok(
            "$argon2d$v=19$m=32,t=1,p=1$c2FsdHNhbHQ$FLAC8IRgUMtzFqAo6V2qlHZQRkc5t9yXZcYaE+wLXDQ",
            b"pw",
            Scheme::Argon2d,
        );
        // Version 0x10, with and without the v= field.
        let v16 =
            "$argon2id$v=16$m=16,t=1,p=1$c2FsdHNhbHQ$jXrG6Quk1DmKaSPlJF0x8NNXYdf37NB5RgfNF7A0Ko0";
        ok(v16, b"old", Scheme::Argon2id);
        ok(&v16.replace("v=16$", ""), b"old", Scheme::Argon2id);
    }

    #[test]
    fn pbkdf2_phc_and_passlib() {
        ok(
            "$pbkdf2-sha512$i=1000,l=64$MDEyMzQ1Njc4OWFiY2RlZg$OM0FAoIqCVK1sWtxDiffVlBejtLa+ks4TP71JiecwuSZCG8iLbnlIEPOMoVX+i2B2wkSxjQ8CRGR9OkNGuIPMQ",
            b"correct horse",
            Scheme::Pbkdf2Sha512,
        );
        ok(
            "$pbkdf2-sha512$2500$yMnKy8zNzs/Q0dLT1NXW1w$00ObAxIBR63SFXtENZp9119ydlpxOeq/GJVdzBVXh3gFELerUnQp./qCymuO.7qoOK3NAxZ7OhzdPusSTKDVfQ",
            b"passlib",
            Scheme::Pbkdf2Sha512,
        );
    }

    #[test]
    fn plaintext_is_flagged() {
        let h = PasswordHash::parse("public").unwrap();
        assert!(h.is_plaintext());
        ok("public", b"public", Scheme::Plaintext);
        ok("a:b c", b"a:b c", Scheme::Plaintext);
        assert!(!PasswordHash::parse(MOSQ_6).unwrap().is_plaintext());
    }

    #[test]
    fn new_hashes_round_trip() {
        let s = hash_argon2id(b"pw").unwrap();
        assert!(s.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{s}");
        ok(&s, b"pw", Scheme::Argon2id);
        assert_ne!(s, hash_argon2id(b"pw").unwrap(), "salts must differ");
        // Fixed salt: the same as libargon2 computes
        // (`echo -n pw | argon2 saltsaltsaltsalt -id -t 2 -k 19456 -p 1 -e`).
        assert_eq!(
            hash_argon2id_with_salt(b"pw", b"saltsaltsaltsalt").unwrap(),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aOJaI7vUM9/qm6/8sgni9fVmwMtEMUdxlpUqY5SGAGE"
        );
        assert!(!dummy_verify(b"pw"));
    }

    #[test]
    fn refusals_name_the_problem() {
        bad("", "empty");
        bad("$5$abc$def", "unknown hash scheme \"$5$\"");
        bad("$2b$10$abcdefghijklmnopqrstuv", "unknown hash scheme");
        bad("$", "unknown hash scheme");
        bad("$7$", "expected $7$iterations$salt$hash");
        bad("$7$0$GEge2aUsyT6WCxY+$AAAA", "iteration count is 0");
        bad("$7$x$GEge2aUsyT6WCxY+$AAAA", "not a number");
        bad("$7$99999999999$GEge2aUsyT6WCxY+$AAAA", "not a number");
        bad("$7$20000000$GEge2aUsyT6WCxY+$AAAA", "above the limit");
        bad("$7$101$GEge2aUsyT6W$AAAA", "salt is 9 bytes");
        bad(
            "$7$101$GEge2aUsyT6WCxY+$AAAA",
            "hash is 3 bytes, expected 64",
        );
        bad("$7$101$!!!!$AAAA", "not valid base64");
        bad(&format!("{MOSQ_7}$extra"), "more fields");
        bad("$6$viK7oio9kIv3NQxU", "expected $6$salt$hash");
        bad("$6$$viK7oio9kIv3NQxU$AAAA", "expected $6$salt$hash");
        bad("$argon2id$v=20$m=8,t=1,p=1$c29tZXNhbHQ$AAAAAAAA", "version");
        bad(
            "$argon2id$v=19$m=8,t=1$c29tZXNhbHQ$AAAAAAAA",
            "all required",
        );
        bad(
            "$argon2id$v=19$m=8,t=1,p=1,m=9$c29tZXNhbHQ$AAAAAAAA",
            "once each",
        );
        bad(
            "$argon2id$v=19$m=8,t=1,p=1,keyid=AA$c29tZXNhbHQ$AAAAAAAA",
            "once each",
        );
        bad(
            "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$AAAAAAAA",
            "above the limit",
        );
        bad(
            "$argon2id$v=19$m=1048576,t=5,p=1$c29tZXNhbHQ$AAAAAAAA",
            "above the limit",
        );
        bad("$argon2id$v=19$m=64,t=1,p=17$c29tZXNhbHQ$AAAAAAAA", "p=17");
        bad(
            "$argon2id$v=19$m=8,t=1,p=2$c29tZXNhbHQ$AAAAAAAA",
            "m=8,t=1,p=2",
        );
        bad(
            "$argon2id$v=19$m=8,t=0,p=1$c29tZXNhbHQ$AAAAAAAA",
            "m=8,t=0,p=1",
        );
        bad(
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AAAAAAAA",
            "salt is 4 bytes",
        );
        bad(
            "$pbkdf2-sha512$i=10,x=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAA",
            "unexpected parameter",
        );
        bad(
            "$pbkdf2-sha512$l=64$MDEyMzQ1Njc4OWFiY2RlZg$AAAA",
            "i=N is missing",
        );
        bad(
            "$pbkdf2-sha512$i=10,l=32$MDEyMzQ1Njc4OWFiY2RlZg$OM0FAoIqCVK1sWtxDiffVlBejtLa+ks4TP71JiecwuSZCG8iLbnlIEPOMoVX+i2B2wkSxjQ8CRGR9OkNGuIPMQ",
            "l= does not match",
        );
        // The error never repeats the stored hash.
        let e = PasswordHash::parse("$7$101$GEge2aUsyT6WCxY+$AAAA").unwrap_err();
        assert!(!e.to_string().contains("GEge2a"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let h = PasswordHash::parse("hunter2").unwrap();
        let d = format!("{h:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("Plaintext"));
    }

    #[test]
    fn oversized_passwords_never_match() {
        let long = vec![b'a'; MAX_PASSWORD_LEN + 1];
        let h = PasswordHash::parse(std::str::from_utf8(&long).unwrap()).unwrap();
        assert!(!h.verify(&long));
        assert!(hash_argon2id(&long).is_err());
    }
}
