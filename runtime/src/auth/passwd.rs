//! `tidemq passwd`: adds, changes or deletes one user of a Mosquitto-format password file,
//! writing argon2id hashes. Other lines (comments, other users, even lines this version cannot
//! read) are kept byte for byte. The file is replaced atomically and keeps its mode and owner;
//! a new file is 0600.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::hash::{MAX_PASSWORD_LEN, hash_argon2id};

/// What to do to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdAction {
    /// Set the password; `None` prompts twice on the terminal without echo.
    Set {
        password: Option<String>,
    },
    Delete,
}

/// Why `tidemq passwd` failed; the text names the file or user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdError(pub String);

impl fmt::Display for PasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PasswdError {}

fn fail(message: impl Into<String>) -> PasswdError {
    PasswdError(message.into())
}

/// Runs `tidemq passwd [-c] FILE USER`: `create` starts from an empty file (replacing any).
pub fn passwd(
    file: &Path,
    user: &str,
    create: bool,
    action: PasswdAction,
) -> Result<(), PasswdError> {
    check_user(user)?;
    let shown = file.display();
    let existing = if create {
        Vec::new()
    } else {
        match fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(fail(format!(
                    "{shown} does not exist (use -c to create it)"
                )));
            }
            Err(e) => return Err(fail(format!("cannot read {shown}: {e}"))),
        }
    };
    let line = match action {
        PasswdAction::Delete => None,
        PasswdAction::Set { password } => {
            let password = match password {
                Some(p) => p,
                None => prompt_twice()?,
            };
            check_password(&password)?;
            let hash = hash_argon2id(password.as_bytes()).map_err(|e| fail(e.to_string()))?;
            Some(format!("{user}:{hash}"))
        }
    };
    let (contents, found) = edit_lines(&existing, user, line.as_deref());
    if line.is_none() && !found {
        return Err(fail(format!("user {user:?} is not in {shown}")));
    }
    write_atomic(file, &contents).map_err(|e| fail(format!("cannot write {shown}: {e}")))
}

fn check_user(user: &str) -> Result<(), PasswdError> {
    let why = if user.is_empty() {
        "is empty"
    } else if user.contains(':') {
        "contains ':'"
    } else if user.chars().any(char::is_control) {
        "contains a control character"
    } else if user.starts_with('#') {
        "starts with '#' (the line would be a comment)"
    } else if user.trim() != user {
        "starts or ends with white space"
    } else if user.len() > 65_535 {
        "is longer than 65535 bytes"
    } else {
        return Ok(());
    };
    Err(fail(format!("user name {user:?} {why}")))
}

fn check_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(fail("empty password"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(fail(format!(
            "password longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

fn prompt_twice() -> Result<String, PasswdError> {
    let first = rpassword::prompt_password("Password: ")
        .map_err(|e| fail(format!("cannot read the password from the terminal: {e}")))?;
    let second = rpassword::prompt_password("Reenter password: ")
        .map_err(|e| fail(format!("cannot read the password from the terminal: {e}")))?;
    if first != second {
        return Err(fail("passwords do not match"));
    }
    Ok(first)
}

/// The file with `user`'s line replaced by `line` (appended if absent; `None` deletes it).
/// Further lines for the same user are removed. Returns the new text and whether the user was
/// there.
pub fn edit_lines(existing: &[u8], user: &str, line: Option<&str>) -> (Vec<u8>, bool) {
    let mut prefix = user.as_bytes().to_vec();
    prefix.push(b':');
    let mut out = Vec::with_capacity(existing.len() + line.map_or(0, str::len) + 1);
    let mut found = false;
    let body = existing.strip_suffix(b"\n").unwrap_or(existing);
    if !existing.is_empty() {
        for old in body.split(|&b| b == b'\n') {
            if old.starts_with(&prefix) {
                if !found && let Some(new) = line {
                    out.extend_from_slice(new.as_bytes());
                    out.push(b'\n');
                }
                found = true;
                continue;
            }
            out.extend_from_slice(old);
            out.push(b'\n');
        }
    }
    if !found && let Some(new) = line {
        out.extend_from_slice(new.as_bytes());
        out.push(b'\n');
    }
    (out, found)
}

/// Replaces `path` with `contents`: a new file in the same directory (unique name, created
/// exclusively, never through a symlink), written and synced, then renamed over the target and
/// the directory synced. An existing file keeps its mode and owner; a new one is 0600. A
/// symlink is followed to the file it names, so the link stays.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let existing = match fs::metadata(&target) {
        Ok(m) if !m.is_file() => {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                target.display()
            )));
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (mut file, tmp) = create_temp(&dir, &name.to_string_lossy())?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    if let Some(m) = &existing {
        if (m.uid(), m.gid()) != (file.metadata()?.uid(), file.metadata()?.gid()) {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid())).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot keep the file's owner (uid {}, gid {}): {e}; run as that user or root",
                        m.uid(),
                        m.gid()
                    ),
                )
            })?;
        }
        // After chown, which may clear set-id bits.
        file.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &target)?;
    guard.disarm();
    File::open(&dir)?.sync_all()
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}

/// Removes the temporary file on any early return.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PasswordFile;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tidemq-passwd-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn edits_keep_other_lines() {
        let old = b"# head\nalice:A\nbob:B\r\nalice:A2\n\nbad line\ncarol:C";
        let (new, found) = edit_lines(old, "alice", Some("alice:N"));
        assert!(found);
        assert_eq!(new, b"# head\nalice:N\nbob:B\r\n\nbad line\ncarol:C\n");
        let (new, found) = edit_lines(old, "dave", Some("dave:D"));
        assert!(!found);
        assert!(new.ends_with(b"carol:C\ndave:D\n"));
        let (new, found) = edit_lines(old, "bob", None);
        assert!(found);
        assert_eq!(new, b"# head\nalice:A\nalice:A2\n\nbad line\ncarol:C\n");
        // A user whose name is another's prefix is a different user.
        let (new, _) = edit_lines(b"al:x\nalice:y\n", "al", None);
        assert_eq!(new, b"alice:y\n");
        assert_eq!(edit_lines(b"", "a", Some("a:1")).0, b"a:1\n");
        assert_eq!(edit_lines(b"x:1\n", "a", None), (b"x:1\n".to_vec(), false));
    }

    #[test]
    fn create_update_delete() {
        let dir = scratch("cud");
        let f = dir.join("pw");
        let set = |p: &str| PasswdAction::Set {
            password: Some(p.to_owned()),
        };
        assert!(
            passwd(&f, "alice", false, set("x"))
                .unwrap_err()
                .0
                .contains("use -c")
        );
        passwd(&f, "alice", true, set("one")).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        passwd(&f, "bob", false, set("two")).unwrap();
        passwd(&f, "alice", false, set("three")).unwrap();
        let pf = PasswordFile::parse("pw", &fs::read(&f).unwrap());
        assert!(pf.problems().is_empty());
        assert!(pf.verify("alice", b"three"));
        assert!(!pf.verify("alice", b"one"));
        assert!(pf.verify("bob", b"two"));
        // Mode of an existing file is kept.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        passwd(&f, "bob", false, PasswdAction::Delete).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        let pf = PasswordFile::parse("pw", &fs::read(&f).unwrap());
        assert_eq!(pf.len(), 1);
        let e = passwd(&f, "bob", false, PasswdAction::Delete).unwrap_err();
        assert!(e.0.contains("\"bob\" is not in"), "{e}");
        // -c replaces the file.
        passwd(&f, "carol", true, set("c")).unwrap();
        let pf = PasswordFile::parse("pw", &fs::read(&f).unwrap());
        assert_eq!(pf.users().map(|(u, _)| u).collect::<Vec<_>>(), ["carol"]);
        // No temporary files left behind.
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("pw")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_are_followed_and_kept() {
        let dir = scratch("link");
        let real = dir.join("real");
        let link = dir.join("link");
        fs::write(&real, "x:1\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"y:2\n").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"y:2\n");
        assert!(write_atomic(&dir, b"z").is_err(), "a directory is refused");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_names_and_passwords() {
        let f = Path::new("/nonexistent/pw");
        let set = |p: &str| PasswdAction::Set {
            password: Some(p.to_owned()),
        };
        for (user, why) in [
            ("", "is empty"),
            ("a:b", "contains ':'"),
            ("a\nb", "control"),
            ("#a", "comment"),
            (" a", "white space"),
        ] {
            let e = passwd(f, user, true, set("p")).unwrap_err();
            assert!(e.0.contains(why), "{user:?}: {e}");
        }
        assert_eq!(
            passwd(f, "a", true, set("")).unwrap_err().0,
            "empty password"
        );
        let e = passwd(f, "a", true, set("p")).unwrap_err();
        assert!(e.0.starts_with("cannot write /nonexistent/pw"), "{e}");
    }
}
