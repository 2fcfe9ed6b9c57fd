//! Mosquitto password files: any bytes give users and per-line problems, never a panic.
//! Cheap hashes are verified; a plaintext entry accepts its own text; editing a user in
//! (as `tidemq passwd` does) leaves exactly that user with the new hash, and deleting removes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemq_runtime::auth::{PasswordFile, PasswordHash, Scheme, edit_lines};

/// A precomputed argon2id hash of "fuzz" at the minimum cost, so that edits cost nothing.
const NEW_LINE: &str =
    "fuzzuser:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$w3tS4v/3jCkrPjH9hyvktVqkCdEgrY9U/P/NtRoLe88";

fn cheap(h: &PasswordHash) -> bool {
    let c = h.cost();
    u64::from(c.iterations) * u64::from(c.memory_kib.max(1)) <= 4096
}

fuzz_target!(|data: &[u8]| {
    let file = PasswordFile::parse("fuzz", data);
    let lines = data.split(|&b| b == b'\n').count();
    for p in file.problems() {
        assert!(
            p.line >= 1 && p.line <= lines,
            "problem line {} of {lines}",
            p.line
        );
        assert!(!p.message.is_empty());
    }
    for (user, entry) in file.users() {
        assert!(!user.is_empty() && !user.contains(':'));
        assert!(entry.line >= 1 && entry.line <= lines);
        if !cheap(&entry.hash) {
            continue;
        }
        let _ = entry.hash.verify(b"fuzz");
        if entry.hash.scheme() == Scheme::Plaintext {
            let raw = data
                .split(|&b| b == b'\n')
                .nth(entry.line - 1)
                .unwrap_or_default();
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let stored = &raw[user.len() + 1..];
            assert!(entry.hash.verify(stored), "plaintext accepts itself");
        }
    }
    // The whole input as one stored value.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(h) = PasswordHash::parse(text)
        && cheap(&h)
    {
        let _ = h.verify(data);
    }
    let (edited, _) = edit_lines(data, "fuzzuser", Some(NEW_LINE));
    let after = PasswordFile::parse("fuzz", &edited);
    let entry = after.get("fuzzuser").expect("the edited user is there");
    assert_eq!(entry.hash.scheme(), Scheme::Argon2id);
    assert!(entry.hash.verify(b"fuzz"));
    let (deleted, _) = edit_lines(data, "fuzzuser", None);
    assert!(
        PasswordFile::parse("fuzz", &deleted)
            .get("fuzzuser")
            .is_none()
    );
});
