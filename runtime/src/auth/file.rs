//! Mosquitto's `password_file`: one `user:hash` per line, `#` comment lines, blank lines.
//!
//! A bad line costs only its own user, as in Mosquitto: the rest of the file loads and each
//! problem is reported with the file, line and user so the caller can log it (or refuse to
//! start). A user defined twice is dropped altogether, so an edit that meant to replace a
//! password never leaves the old one working.

use std::collections::BTreeMap;
use std::fmt;

use super::hash::{PasswordHash, dummy_verify};

/// One usable user.
#[derive(Debug, Clone)]
pub struct PasswordEntry {
    /// 1-based line in the file.
    pub line: usize,
    pub hash: PasswordHash,
}

/// One line that did not give a usable user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file: String,
    pub line: usize,
    /// The user the line names, when it could be read.
    pub user: Option<String>,
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(user) = &self.user {
            write!(f, "user {user:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FileProblem {}

/// The users of one password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: BTreeMap<String, PasswordEntry>,
    problems: Vec<FileProblem>,
}

impl PasswordFile {
    /// Reads the file's bytes. `file` names it in problems. Never fails as a whole.
    pub fn parse(file: &str, text: &[u8]) -> PasswordFile {
        let mut out = PasswordFile::default();
        // user -> lines, to drop users defined more than once.
        let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let problem = |line: usize, user: Option<&str>, message: String| FileProblem {
            file: file.to_owned(),
            line,
            user: user.map(str::to_owned),
            message,
        };
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let trimmed = raw.trim_ascii_start();
            if trimmed.is_empty() || trimmed.starts_with(b"#") {
                continue;
            }
            let Ok(raw) = std::str::from_utf8(raw) else {
                out.problems
                    .push(problem(line, None, "not valid UTF-8".to_owned()));
                continue;
            };
            let Some((user, stored)) = raw.split_once(':') else {
                out.problems.push(problem(
                    line,
                    None,
                    "expected user:hash (no ':' on the line)".to_owned(),
                ));
                continue;
            };
            if user.is_empty() {
                out.problems
                    .push(problem(line, None, "empty user name".to_owned()));
                continue;
            }
            if user.trim() != user {
                out.problems.push(problem(
                    line,
                    Some(user),
                    "user name starts or ends with white space".to_owned(),
                ));
                continue;
            }
            seen.entry(user.to_owned()).or_default().push(line);
            match PasswordHash::parse(stored) {
                Ok(hash) => {
                    out.users
                        .entry(user.to_owned())
                        .or_insert(PasswordEntry { line, hash });
                }
                Err(e) => out.problems.push(problem(line, Some(user), e.to_string())),
            }
        }
        for (user, lines) in seen {
            if let [first, rest @ ..] = lines.as_slice()
                && !rest.is_empty()
            {
                out.users.remove(&user);
                let others: Vec<String> = rest.iter().map(usize::to_string).collect();
                out.problems.push(problem(
                    *first,
                    Some(&user),
                    format!(
                        "defined again on line {}: the user is refused until only one remains",
                        others.join(", ")
                    ),
                ));
            }
        }
        out.problems.sort_by_key(|p| p.line);
        out
    }

    pub fn get(&self, user: &str) -> Option<&PasswordEntry> {
        self.users.get(user)
    }

    /// Users in name order.
    pub fn users(&self) -> impl Iterator<Item = (&str, &PasswordEntry)> {
        self.users.iter().map(|(u, e)| (u.as_str(), e))
    }

    /// Users stored in plaintext, for a warning at start.
    pub fn plaintext_users(&self) -> impl Iterator<Item = &str> {
        self.users()
            .filter(|(_, e)| e.hash.is_plaintext())
            .map(|(u, _)| u)
    }

    /// Lines that gave no user, in line order.
    pub fn problems(&self) -> &[FileProblem] {
        &self.problems
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Does `user` exist with this password? An unknown user costs a dummy argon2id verify,
    /// so that the answer's timing does not tell which users exist. Blocking.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(e) => e.hash.verify(password),
            None => dummy_verify(password),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scheme;

    const MOSQ_7: &str = "$7$101$GEge2aUsyT6WCxY+$avFlvfjesMzbsqibO4LwcEJTdimrknTLp9VdrEkqBYOhz+KjitG8A0BVga0hXf2OBC9tZ4oDC1xIGnAcEdzWVw==";
    const MOSQ_6: &str = "$6$viK7oio9kIv3NQxU$XiJL2JA3uftr9yslOv7yDbEbXvCwAByqAwMyTyK7LG6acghYI+yj0djaU+8Nkb430E9oUC7tuW/c4ig7K4aGsg==";

    #[test]
    fn reads_users_comments_and_blank_lines() {
        let text = format!(
            "# users\n\nalice:{MOSQ_7}\r\n   \n  # indented comment\nbob:{MOSQ_6}\ncarol:plain:text\n"
        );
        let f = PasswordFile::parse("/etc/pw", text.as_bytes());
        assert!(f.problems().is_empty(), "{:?}", f.problems());
        assert_eq!(f.len(), 3);
        assert_eq!(f.get("alice").unwrap().line, 3);
        assert_eq!(f.get("alice").unwrap().hash.scheme(), Scheme::Pbkdf2Sha512);
        assert_eq!(f.get("bob").unwrap().hash.scheme(), Scheme::Sha512);
        assert!(f.verify("alice", b"secret"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(f.verify("carol", b"plain:text"));
        assert!(!f.verify("carol", b"plain"));
        assert!(!f.verify("dave", b"secret"));
        assert_eq!(f.plaintext_users().collect::<Vec<_>>(), ["carol"]);
        let names: Vec<&str> = f.users().map(|(u, _)| u).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
    }

    #[test]
    fn bad_lines_cost_only_their_user() {
        let text =
            format!("alice:{MOSQ_7}\nbob:$5$x$y\nno colon here\n:nouser\n \tpadded:pw\nfine:pw\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"latin\xe9:pw\nlast:$7$0$AA$AA");
        let f = PasswordFile::parse("pw.txt", &bytes);
        let shown: Vec<String> = f.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 6, "{shown:#?}");
        assert!(shown[0].starts_with("pw.txt:2: user \"bob\": unknown hash scheme \"$5$\""));
        assert_eq!(
            shown[1],
            "pw.txt:3: expected user:hash (no ':' on the line)"
        );
        assert_eq!(shown[2], "pw.txt:4: empty user name");
        assert!(shown[3].starts_with("pw.txt:5: user \" \\tpadded\": user name starts"));
        assert_eq!(shown[4], "pw.txt:7: not valid UTF-8");
        assert!(shown[5].starts_with("pw.txt:8: user \"last\": "));
        let names: Vec<&str> = f.users().map(|(u, _)| u).collect();
        assert_eq!(names, ["alice", "fine"]);
    }

    #[test]
    fn a_user_defined_twice_is_refused() {
        let text = format!("alice:{MOSQ_7}\nbob:x\nalice:other\nalice:$9$bad\n");
        let f = PasswordFile::parse("pw", text.as_bytes());
        assert!(f.get("alice").is_none());
        assert!(!f.verify("alice", b"secret"));
        assert!(f.verify("bob", b"x"));
        let shown: Vec<String> = f.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "pw:1: user \"alice\": defined again on line 3, 4: the user is refused until only one remains",
                "pw:4: user \"alice\": unknown hash scheme \"$9$\" (known: $argon2id$, $argon2i$, $argon2d$, $pbkdf2-sha512$, $7$, $6$; a plaintext password must not start with $)",
            ]
        );
    }

    #[test]
    fn empty_and_odd_inputs() {
        assert!(PasswordFile::parse("pw", b"").is_empty());
        assert!(PasswordFile::parse("pw", b"\n\n\r\n").problems().is_empty());
        let f = PasswordFile::parse("pw", b"user:");
        assert_eq!(
            f.problems()[0].to_string(),
            "pw:1: user \"user\": empty password"
        );
        let f = PasswordFile::parse("pw", b"a:b\rc");
        assert!(f.verify("a", b"b\rc"));
    }
}
