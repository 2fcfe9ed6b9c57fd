//! The core's `Output::Authenticate`, answered: the password table (the configuration's user
//! map and `auth.password_file`), a bounded pool of blocking verifications, and a positive
//! cache with a time to live, flushed whenever the table is rebuilt.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tidemq_core::acl::Action;
use tidemq_core::{AuthOutcome, Config};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::file::PasswordFile;
use super::hash::{PasswordHash, dummy_verify};
use super::http::{HttpAuth, Subject};

/// The users a password may be checked against.
#[derive(Debug, Default)]
pub struct PasswordTable {
    users: BTreeMap<String, PasswordHash>,
}

/// What loading the table found worth telling: entries refused, plaintext passwords.
#[derive(Debug, Default)]
pub struct TableReport {
    pub problems: Vec<String>,
    pub plaintext_users: Vec<String>,
}

impl PasswordTable {
    /// The configuration's users (a value starting with a known `$scheme$` is a hash, any
    /// other value plaintext), then the password file's, which win for a name in both. An
    /// entry that cannot be read is left out and reported; a password file that cannot be read
    /// at all is an error.
    pub fn load(config: &Config) -> Result<(PasswordTable, TableReport), String> {
        let mut table = PasswordTable::default();
        let mut report = TableReport::default();
        for (user, stored) in &config.users {
            match PasswordHash::parse(stored) {
                Ok(hash) => {
                    if hash.is_plaintext() {
                        report.plaintext_users.push(user.clone());
                    }
                    table.users.insert(user.clone(), hash);
                }
                Err(e) => report
                    .problems
                    .push(format!("auth.password.{user}: refused: {e}")),
            }
        }
        if let Some(path) = &config.auth.password_file {
            let bytes = read_limited(Path::new(path))
                .map_err(|e| format!("auth.password_file {path}: {e}"))?;
            let file = PasswordFile::parse(path, &bytes);
            for problem in file.problems() {
                report.problems.push(problem.to_string());
            }
            for (user, entry) in file.users() {
                if entry.hash.is_plaintext() {
                    report.plaintext_users.push(user.to_owned());
                }
                table.users.insert(user.to_owned(), entry.hash.clone());
            }
        }
        Ok((table, report))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Blocking. An unknown user costs a dummy verification, so timing does not tell which
    /// users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => dummy_verify(password),
        }
    }
}

/// The largest password file read (a bound on what a reload holds).
const MAX_PASSWORD_FILE: u64 = 16 * 1024 * 1024;

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_PASSWORD_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PASSWORD_FILE} bytes"
        )));
    }
    std::fs::read(path)
}

/// A cache entry's key: the user and a keyed digest of the password (the key is random per
/// process, so the cache holds nothing a dictionary could be run against).
type CacheKey = (String, [u8; 32]);

/// A verification either answered now or running.
pub enum Check {
    Ready(AuthOutcome),
    /// Resolves with the outcome; pass it to [`Checker::finished`] with `ticket`.
    Later {
        ticket: Ticket,
        work: Pin<Box<dyn Future<Output = AuthOutcome> + Send>>,
    },
}

/// An ACL question: answered now (remembered) or asked of the service.
pub enum AclCheck {
    Ready(bool),
    Later {
        ticket: AclTicket,
        work: Pin<Box<dyn Future<Output = bool> + Send>>,
    },
}

/// Ties a finished ACL question to the settings it was asked under.
#[derive(Debug)]
pub struct AclTicket {
    key: AclKey,
    generation: u64,
}

/// User, client id, address, access (1 subscribe, 2 publish), topic.
type AclKey = (Option<String>, String, String, u8, String);

/// Ties a finished verification to the table it was made against.
#[derive(Debug)]
pub struct Ticket {
    key: CacheKey,
    generation: u64,
    /// How long a success is remembered.
    ttl: Duration,
}

/// Answers credential checks. Owned by the driver.
pub struct Checker {
    table: Arc<PasswordTable>,
    /// Bumped on every rebuild: answers made against an older table are not cached.
    generation: u64,
    /// Until when, and whether as a superuser.
    cache: BTreeMap<CacheKey, (Instant, bool)>,
    /// The ACL service's answers: until when, allowed.
    acl_cache: BTreeMap<AclKey, (Instant, bool)>,
    http: Option<Arc<HttpAuth>>,
    ttl: Duration,
    cache_max: usize,
    permits: Arc<Semaphore>,
    workers: usize,
    /// Verifications started and not finished (waiting for a permit or running).
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    salt: [u8; 16],
}

impl Checker {
    pub fn new(config: &Config, table: PasswordTable) -> Checker {
        let mut salt = [0u8; 16];
        // Without randomness the digest is still one-way; only the per-process key is lost.
        let _ = getrandom::getrandom(&mut salt);
        let workers = workers(config);
        Checker {
            table: Arc::new(table),
            generation: 0,
            cache: BTreeMap::new(),
            acl_cache: BTreeMap::new(),
            http: HttpAuth::new(config),
            ttl: Duration::from_millis(config.auth.cache_ttl_ms),
            cache_max: config.auth.cache_max as usize,
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: config.auth.max_pending as usize,
            salt,
        }
    }

    /// A new table and settings (a reload): the cache is emptied.
    pub fn replace(&mut self, config: &Config, table: PasswordTable) {
        self.table = Arc::new(table);
        self.http = HttpAuth::new(config);
        self.generation += 1;
        self.cache.clear();
        self.acl_cache.clear();
        self.ttl = Duration::from_millis(config.auth.cache_ttl_ms);
        self.cache_max = config.auth.cache_max as usize;
        self.max_in_flight = config.auth.max_pending as usize;
        let workers = workers(config);
        if workers != self.workers {
            // Running verifications keep their permits of the old pool.
            self.permits = Arc::new(Semaphore::new(workers));
            self.workers = workers;
        }
    }

    /// Settings changed without a new table.
    pub fn flush(&mut self) {
        self.generation += 1;
        self.cache.clear();
        self.acl_cache.clear();
    }

    /// Asks the ACL service (`auth.http_auth.acl_req`), unless its answer is remembered.
    /// Denied when no service is configured any more or too many questions are under way.
    pub fn authorize(
        &mut self,
        now: Instant,
        who: (&str, Option<&str>, &str),
        action: Action,
        topic: &str,
    ) -> AclCheck {
        let (client_id, username, peer) = who;
        let Some(http) = self.http.clone() else {
            return AclCheck::Ready(false);
        };
        let ip = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
        let access = match action {
            Action::Subscribe => 1,
            Action::Publish => 2,
        };
        let key: AclKey = (
            username.map(str::to_owned),
            client_id.to_owned(),
            ip.to_owned(),
            access,
            topic.to_owned(),
        );
        match self.acl_cache.get(&key) {
            Some(&(until, allow)) if until > now => return AclCheck::Ready(allow),
            Some(_) => {
                self.acl_cache.remove(&key);
            }
            None => {}
        }
        if self.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
            return AclCheck::Ready(false);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(self.in_flight.clone());
        let (user, client_id, peer, topic) = (
            username.unwrap_or_default().to_owned(),
            client_id.to_owned(),
            peer.to_owned(),
            topic.to_owned(),
        );
        let work = async move {
            let _in_flight = in_flight;
            let subject = Subject {
                username: &user,
                password: b"",
                client_id: &client_id,
                peer: &peer,
            };
            http.authorize(&subject, action, &topic).await
        };
        AclCheck::Later {
            ticket: AclTicket {
                key,
                generation: self.generation,
            },
            work: Box::pin(work),
        }
    }

    /// An ACL answer came back: remembered for `auth.http_auth.cache_ttl`.
    pub fn acl_finished(&mut self, now: Instant, ticket: AclTicket, allow: bool) {
        let Some(ttl) = self.http.as_ref().map(|h| h.cache_ttl()) else {
            return;
        };
        if ticket.generation != self.generation || ttl.is_zero() {
            return;
        }
        if self.acl_cache.len() >= self.cache_max {
            self.acl_cache.retain(|_, (until, _)| *until > now);
            if self.acl_cache.len() >= self.cache_max {
                return;
            }
        }
        self.acl_cache.insert(ticket.key, (now + ttl, allow));
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// `context` is what else the answer depends on (for HTTP: client id and address).
    fn key(&self, username: &str, password: &[u8], context: &[&str]) -> CacheKey {
        let mut d = Sha256::new();
        d.update(self.salt);
        d.update((password.len() as u64).to_be_bytes());
        d.update(password);
        for c in context {
            d.update((c.len() as u64).to_be_bytes());
            d.update(c.as_bytes());
        }
        let mut digest = [0u8; 32];
        for (out, b) in digest.iter_mut().zip(d.finalize().iter()) {
            *out = *b;
        }
        (username.to_owned(), digest)
    }

    /// Starts a check: a cached success, a busy refusal when too many are under way, a
    /// verification on the blocking pool (at most `workers` at once) for a user in the table,
    /// or, for the others, the HTTP service when one is configured.
    pub fn check(
        &mut self,
        now: Instant,
        username: &str,
        password: &[u8],
        client_id: &str,
        peer: &str,
    ) -> Check {
        let http = self
            .http
            .clone()
            .filter(|h| h.authenticates() && !self.table.contains(username));
        let ip = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
        let key = match &http {
            Some(_) => self.key(username, password, &[client_id, ip]),
            None => self.key(username, password, &[]),
        };
        match self.cache.get(&key) {
            Some(&(until, superuser)) if until > now => {
                return Check::Ready(AuthOutcome::Allow { superuser });
            }
            Some(_) => {
                self.cache.remove(&key);
            }
            None => {}
        }
        if self.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
            return Check::Ready(AuthOutcome::Busy);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(self.in_flight.clone());
        if let Some(http) = http {
            let ticket = Ticket {
                key,
                generation: self.generation,
                ttl: http.cache_ttl(),
            };
            let (user, password) = (username.to_owned(), password.to_vec());
            let (client_id, peer) = (client_id.to_owned(), peer.to_owned());
            let work = async move {
                let _in_flight = in_flight;
                let subject = Subject {
                    username: &user,
                    password: &password,
                    client_id: &client_id,
                    peer: &peer,
                };
                http.decide(&subject).await
            };
            return Check::Later {
                ticket,
                work: Box::pin(work),
            };
        }
        let permits = self.permits.clone();
        let table = self.table.clone();
        let user = username.to_owned();
        let password = password.to_vec();
        let work = async move {
            let _in_flight = in_flight;
            let Ok(_permit) = permits.acquire_owned().await else {
                return AuthOutcome::Busy;
            };
            match tokio::task::spawn_blocking(move || table.verify(&user, &password)).await {
                Ok(true) => AuthOutcome::Allow { superuser: false },
                Ok(false) => AuthOutcome::Deny,
                Err(_) => AuthOutcome::Busy,
            }
        };
        Check::Later {
            ticket: Ticket {
                key,
                generation: self.generation,
                ttl: self.ttl,
            },
            work: Box::pin(work),
        }
    }

    /// A verification finished: a success against the current table is remembered.
    pub fn finished(&mut self, now: Instant, ticket: Ticket, outcome: AuthOutcome) {
        let AuthOutcome::Allow { superuser } = outcome else {
            return;
        };
        if ticket.generation != self.generation || ticket.ttl.is_zero() {
            return;
        }
        if self.cache.len() >= self.cache_max {
            self.cache.retain(|_, (until, _)| *until > now);
            if self.cache.len() >= self.cache_max {
                return;
            }
        }
        self.cache.insert(ticket.key, (now + ticket.ttl, superuser));
    }
}

fn workers(config: &Config) -> usize {
    match config.auth.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// Counts a verification until it ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(users: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (u, p) in users {
            c.users.insert((*u).to_owned(), (*p).to_owned());
        }
        c
    }

    async fn run(checker: &mut Checker, user: &str, password: &str) -> AuthOutcome {
        match checker.check(
            Instant::now(),
            user,
            password.as_bytes(),
            "c",
            "127.0.0.1:1",
        ) {
            Check::Ready(o) => o,
            Check::Later { ticket, work } => {
                let o = work.await;
                checker.finished(Instant::now(), ticket, o);
                o
            }
        }
    }

    #[test]
    fn unknown_schemes_are_refused_per_entry_and_plaintext_is_reported() {
        let c = config(&[("a", "$5$x$y"), ("b", "plain")]);
        let (table, report) = PasswordTable::load(&c).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(report.plaintext_users, ["b"]);
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].contains("auth.password.a"));
    }

    #[test]
    fn a_missing_password_file_is_an_error() {
        let mut c = Config::default();
        c.auth.password_file = Some("/nonexistent/tidemq-passwd".to_owned());
        assert!(PasswordTable::load(&c).is_err());
    }

    #[tokio::test]
    async fn successes_are_cached_until_the_table_is_replaced() {
        let c = config(&[("alice", "secret")]);
        let (table, _) = PasswordTable::load(&c).unwrap();
        let mut checker = Checker::new(&c, table);
        assert_eq!(run(&mut checker, "alice", "nope").await, AuthOutcome::Deny);
        assert_eq!(checker.cache_len(), 0);
        let allow = AuthOutcome::Allow { superuser: false };
        assert_eq!(run(&mut checker, "alice", "secret").await, allow);
        assert_eq!(checker.cache_len(), 1);
        assert!(matches!(
            checker.check(Instant::now(), "alice", b"secret", "c", "127.0.0.1:1"),
            Check::Ready(AuthOutcome::Allow { .. })
        ));
        let c2 = config(&[("alice", "changed")]);
        let (table, _) = PasswordTable::load(&c2).unwrap();
        checker.replace(&c2, table);
        assert_eq!(checker.cache_len(), 0);
        assert_eq!(
            run(&mut checker, "alice", "secret").await,
            AuthOutcome::Deny
        );
    }

    #[tokio::test]
    async fn beyond_max_pending_the_answer_is_busy() {
        let mut c = config(&[("alice", "secret")]);
        c.auth.max_pending = 1;
        let (table, _) = PasswordTable::load(&c).unwrap();
        let mut checker = Checker::new(&c, table);
        let first = checker.check(Instant::now(), "alice", b"secret", "c", "p");
        assert!(matches!(first, Check::Later { .. }));
        assert!(matches!(
            checker.check(Instant::now(), "alice", b"other", "c", "p"),
            Check::Ready(AuthOutcome::Busy)
        ));
        drop(first);
        assert!(matches!(
            checker.check(Instant::now(), "alice", b"other", "c", "p"),
            Check::Later { .. }
        ));
    }
}
