//! Password files across tools: files written by Mosquitto's `mosquitto_passwd` (Debian
//! package `mosquitto`) verify with TideMQ's parser and hashes, and `tidemq passwd` writes files
//! that do too. A missing `mosquitto_passwd` fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{require_program, run_with_timeout, unique};
use tidemq_runtime::auth::{PasswordFile, Scheme};

const LIMIT: Duration = Duration::from_secs(60);

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tidemq-auth-passwd"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_ok(program: &str, args: &[&str]) {
    let out = run_with_timeout(program, args, LIMIT);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.stdout,
        out.stderr
    );
}

fn load(p: &Path) -> PasswordFile {
    let f = PasswordFile::parse(path_str(p), &fs::read(p).unwrap());
    assert!(f.problems().is_empty(), "{:?}", f.problems());
    f
}

fn scheme(f: &PasswordFile, user: &str) -> Scheme {
    f.get(user).unwrap().hash.scheme()
}

#[test]
fn mosquitto_passwd_files_verify() {
    require_program(
        "mosquitto_passwd",
        "install the Debian/Ubuntu package `mosquitto` (apt-get install mosquitto)",
    );
    let dir = scratch();
    let file = dir.join("passwd");
    let f = path_str(&file);
    run_ok("mosquitto_passwd", &["-c", "-b", f, "alice", "secret"]);
    run_ok(
        "mosquitto_passwd",
        &["-H", "sha512", "-b", f, "bob", "hunter2"],
    );
    run_ok("mosquitto_passwd", &["-b", f, "carol", "pa:ss wörd"]);
    let pf = load(&file);
    assert_eq!(pf.len(), 3);
    assert_eq!(scheme(&pf, "alice"), Scheme::Pbkdf2Sha512);
    assert_eq!(scheme(&pf, "bob"), Scheme::Sha512);
    assert!(pf.verify("alice", b"secret"));
    assert!(pf.verify("bob", b"hunter2"));
    assert!(pf.verify("carol", "pa:ss wörd".as_bytes()));
    assert!(!pf.verify("alice", b"hunter2"));
    assert!(!pf.verify("bob", b"secret"));
    assert!(!pf.verify("carol", b"pa"));
    assert!(!pf.verify("dave", b"secret"));

    // `-U` hashes a plaintext file in place; the same passwords verify before and after.
    let plain = dir.join("plain");
    fs::write(&plain, "erin:first\nfrank:second\n").unwrap();
    let before = load(&plain);
    assert_eq!(before.plaintext_users().count(), 2);
    assert!(before.verify("erin", b"first"));
    run_ok("mosquitto_passwd", &["-U", path_str(&plain)]);
    let after = load(&plain);
    assert_eq!(after.plaintext_users().count(), 0);
    assert!(after.verify("erin", b"first"));
    assert!(after.verify("frank", b"second"));
    assert!(!after.verify("frank", b"first"));

    // `tidemq passwd` edits a Mosquitto file and leaves its other users as they were.
    let tidemq = env!("CARGO_BIN_EXE_tidemq");
    run_ok(tidemq, &["passwd", "-b", f, "dave", "new one"]);
    let pf = load(&file);
    assert_eq!(scheme(&pf, "dave"), Scheme::Argon2id);
    assert!(pf.verify("dave", b"new one"));
    assert!(pf.verify("alice", b"secret"));
    assert!(pf.verify("bob", b"hunter2"));
    // And mosquitto_passwd still edits the file afterwards.
    run_ok("mosquitto_passwd", &["-D", f, "bob"]);
    let pf = load(&file);
    assert!(pf.get("bob").is_none());
    assert!(pf.verify("dave", b"new one"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tidemq_passwd_writes_verifiable_files() {
    let tidemq = env!("CARGO_BIN_EXE_tidemq");
    let dir = scratch();
    let file = dir.join("passwd");
    let f = path_str(&file);

    let out = run_with_timeout(tidemq, &["passwd", "-b", f, "alice", "x"], LIMIT);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("does not exist (use -c to create it)"),
        "{}",
        out.stderr
    );

    run_ok(tidemq, &["passwd", "-c", "-b", f, "alice", "secret"]);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
        "{text}"
    );
    run_ok(tidemq, &["passwd", "-b", f, "bob", "pw2"]);
    run_ok(tidemq, &["passwd", "-b", f, "alice", "changed"]);
    let pf = load(&file);
    assert_eq!(pf.len(), 2);
    assert!(pf.verify("alice", b"changed"));
    assert!(!pf.verify("alice", b"secret"));
    assert!(pf.verify("bob", b"pw2"));

    run_ok(tidemq, &["passwd", "-D", f, "bob"]);
    let pf = load(&file);
    assert!(pf.get("bob").is_none());
    let out = run_with_timeout(tidemq, &["passwd", "-D", f, "bob"], LIMIT);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("user \"bob\" is not in"),
        "{}",
        out.stderr
    );

    // Refused before anything is written.
    for args in [
        vec!["passwd", "-b", f, "a:b", "x"],
        vec!["passwd", "-b", f, "", "x"],
        vec!["passwd", "-b", f, "carol", ""],
    ] {
        let out = run_with_timeout(tidemq, &args, LIMIT);
        assert!(!out.status.success(), "{args:?}");
    }
    // Without -b and without a terminal (setsid: no controlling one), the prompt fails
    // instead of hanging.
    let out = run_with_timeout("setsid", &["-w", tidemq, "passwd", f, "carol"], LIMIT);
    assert!(!out.status.success());
    assert!(out.stderr.contains("terminal"), "{}", out.stderr);
    // -b needs the password; -c and -D do not go together.
    assert!(
        !run_with_timeout(tidemq, &["passwd", "-b", f, "carol"], LIMIT)
            .status
            .success()
    );
    assert!(
        !run_with_timeout(tidemq, &["passwd", "-c", "-D", f, "carol"], LIMIT)
            .status
            .success()
    );
    assert_eq!(load(&file).len(), 1);
    fs::remove_dir_all(&dir).unwrap();
}
