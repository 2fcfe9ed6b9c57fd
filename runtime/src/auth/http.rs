//! NanoMQ's `auth.http_auth`: a user the password table does not hold is asked of a web
//! service (`auth_req`; `super_req` then says whether it is a superuser). HTTP 200 allows, any
//! other status denies; a server that cannot be reached or answer within the timeout denies
//! unless `on_error = allow`. Requests go out with hyper's HTTP/1 client, at most `pool_size`
//! at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tidemq_core::AuthOutcome;
use tidemq_core::acl::Action;
use tidemq_core::config::{Config, HttpAuthConfig, HttpAuthRequest};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Who is asking, for the placeholders.
pub struct Subject<'a> {
    pub username: &'a str,
    pub password: &'a [u8],
    pub client_id: &'a str,
    /// `ip:port` of the client.
    pub peer: &'a str,
}

pub struct HttpAuth {
    config: HttpAuthConfig,
    permits: Arc<Semaphore>,
    /// The MQTT listener's port (`%p`).
    server_port: String,
}

impl HttpAuth {
    /// The client for `config`, if it asks about clients or their packets at all.
    pub fn new(config: &Config) -> Option<Arc<HttpAuth>> {
        let h = &config.auth.http_auth;
        (h.asks() || h.asks_acl()).then(|| {
            Arc::new(HttpAuth {
                config: h.clone(),
                permits: Arc::new(Semaphore::new(h.pool_size as usize)),
                server_port: config
                    .url
                    .rsplit_once(':')
                    .map(|(_, p)| p.trim_end_matches('/').to_owned())
                    .unwrap_or_default(),
            })
        })
    }

    /// Whether users are asked about (`auth_req`), not only their packets.
    pub fn authenticates(&self) -> bool {
        self.config.auth_req.is_some()
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.config.cache_ttl_ms)
    }

    /// `auth_req`, then `super_req` for a client it allowed.
    pub async fn decide(&self, s: &Subject<'_>) -> AuthOutcome {
        let Some(req) = &self.config.auth_req else {
            return AuthOutcome::Deny;
        };
        match self.call(req, s, None).await {
            Ok(200) => {}
            Ok(status) => {
                tracing::debug!(status, user = s.username, "http auth: denied");
                return AuthOutcome::Deny;
            }
            Err(e) => {
                tracing::warn!(error = e, url = req.url, "http auth: no answer");
                return if self.config.allow_on_error {
                    AuthOutcome::Allow { superuser: false }
                } else {
                    AuthOutcome::Deny
                };
            }
        }
        let superuser = match &self.config.super_req {
            Some(req) => matches!(self.call(req, s, None).await, Ok(200)),
            None => false,
        };
        AuthOutcome::Allow { superuser }
    }

    /// `acl_req` about `action` on `topic`: allowed?
    pub async fn authorize(&self, s: &Subject<'_>, action: Action, topic: &str) -> bool {
        let Some(req) = &self.config.acl_req else {
            return false;
        };
        match self.call(req, s, Some((action, topic))).await {
            Ok(status) => status == 200,
            Err(e) => {
                tracing::warn!(error = e, url = req.url, "http acl: no answer");
                self.config.allow_on_error
            }
        }
    }

    /// One request; its HTTP status.
    async fn call(
        &self,
        req: &HttpAuthRequest,
        s: &Subject<'_>,
        acl: Option<(Action, &str)>,
    ) -> Result<u16, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let (authority, path) = split_url(&req.url)?;
        let form = encode_params(&req.params, s, &self.server_port, acl);
        let get = req.method.eq_ignore_ascii_case("GET");
        let uri = match (get, form.is_empty()) {
            (true, false) if path.contains('?') => format!("{path}&{form}"),
            (true, false) => format!("{path}?{form}"),
            _ => path.to_owned(),
        };
        let mut builder = Request::builder()
            .method(if get { "GET" } else { "POST" })
            .uri(uri)
            .header(hyper::header::HOST, authority);
        let has_type = req
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        if !get && !has_type {
            builder = builder.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = if get { Bytes::new() } else { Bytes::from(form) };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let connect = Duration::from_millis(self.config.connect_timeout_ms);
        let whole = Duration::from_millis(self.config.timeout_ms);
        let exchange = async {
            let stream = tokio::time::timeout(connect, TcpStream::connect(authority))
                .await
                .map_err(|_| "connect timeout".to_owned())?
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let driver = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            drop(driver);
            Ok(response.status().as_u16())
        };
        tokio::time::timeout(whole, exchange)
            .await
            .map_err(|_| "timeout".to_owned())?
    }
}

/// Ends the connection's task when the exchange ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `http://host:port/path?query` into `host:port` and `/path?query`.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not an http:// URL"))?;
    Ok(match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    })
}

/// `k=v&...`, form-encoded, with the placeholders of `v` replaced.
fn encode_params(
    params: &[(String, String)],
    s: &Subject<'_>,
    server_port: &str,
    acl: Option<(Action, &str)>,
) -> String {
    let ip = match s.peer.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => s.peer.rsplit_once(':').map_or(s.peer, |(h, _)| h),
    };
    let password = String::from_utf8_lossy(s.password);
    let mut out = String::new();
    for (k, v) in params {
        let mut value = String::new();
        let mut chars = v.chars();
        while let Some(ch) = chars.next() {
            if ch != '%' {
                value.push(ch);
                continue;
            }
            match chars.next() {
                Some('u') => value.push_str(s.username),
                Some('c') => value.push_str(s.client_id),
                Some('a') => value.push_str(ip),
                Some('P') => value.push_str(&password),
                Some('p') => value.push_str(server_port),
                Some('r') => value.push_str("mqtt"),
                // ACL requests only: the access (1 subscribe, 2 publish) and the topic.
                Some('A') if acl.is_some() => value.push_str(match acl {
                    Some((Action::Subscribe, _)) => "1",
                    _ => "2",
                }),
                Some('t') if acl.is_some() => value.push_str(acl.map_or("", |(_, t)| t)),
                Some(other) => {
                    value.push('%');
                    value.push(other);
                }
                None => value.push('%'),
            }
        }
        if !out.is_empty() {
            out.push('&');
        }
        form_encode(k, &mut out);
        out.push('=');
        form_encode(&value, &mut out);
    }
    out
}

fn form_encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_encoded() {
        let s = Subject {
            username: "al ice",
            password: b"p&w",
            client_id: "c/1",
            peer: "[::1]:5555",
        };
        let params = vec![
            ("u".to_owned(), "%u".to_owned()),
            ("x".to_owned(), "%c-%a-%P-%p-%r-%z".to_owned()),
        ];
        assert_eq!(
            encode_params(&params, &s, "1883", None),
            "u=al%20ice&x=c%2F1-%3A%3A1-p%26w-1883-mqtt-%25z"
        );
        let acl = vec![
            ("a".to_owned(), "%A".to_owned()),
            ("t".to_owned(), "%t".to_owned()),
        ];
        assert_eq!(
            encode_params(&acl, &s, "1883", Some((Action::Subscribe, "a/#"))),
            "a=1&t=a%2F%23"
        );
        assert_eq!(
            encode_params(&acl, &s, "1883", Some((Action::Publish, "x"))),
            "a=2&t=x"
        );
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/auth?x=1"),
            Ok(("127.0.0.1:8080", "/auth?x=1"))
        );
        assert_eq!(split_url("http://h:1"), Ok(("h:1", "/")));
        assert!(split_url("https://h/").is_err());
    }
}
