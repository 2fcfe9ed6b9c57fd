//! Client passwords: the hash formats Mosquitto and PHC tools write, Mosquitto's password file,
//! and the writer behind `tidemq passwd`.
//!
//! Verifying costs milliseconds of CPU (argon2id, PBKDF2), so [`PasswordHash::verify`] belongs
//! on a blocking pool, never on a tokio worker or in the core. Parsing is cheap and pure.

mod file;
mod hash;
mod http;
mod passwd;
mod service;

pub use file::{FileProblem, PasswordEntry, PasswordFile};
pub use hash::{
    Cost, HashError, MAX_ARGON2_LANES, MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_WORK, MAX_PASSWORD_LEN,
    MAX_PBKDF2_ITERATIONS, PasswordHash, Scheme, dummy_verify, hash_argon2id,
};
pub use passwd::{PasswdAction, PasswdError, edit_lines, passwd, write_atomic};
pub use service::{AclCheck, AclTicket, Check, Checker, PasswordTable, TableReport, Ticket};
