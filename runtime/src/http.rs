//! The admin HTTP server (hyper, HTTP/1.1). It only carries requests: the body, the
//! `Authorization` header and a JWT verdict go to the core as one input (`POST /api/v1`, and
//! `/api/v4/...` with its method, path and query); the core's reply comes back as status,
//! body and content type. The health endpoints (`/healthz`, `/readyz`, `/status`) are
//! answered here from [`Readiness`], without credentials and without the core, and so is the
//! dashboard's static page (`dashboard.rs`), which holds no data of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tidemq_core::admin::{Credentials, JwtVerdict, scheme_token};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::health::{self, Readiness};

/// One admin request on its way to the core, with the channel for its answer. A request
/// is authorized from its head first; only then is its body read and sent.
pub(crate) enum AdminCall {
    Authorize {
        credentials: Credentials,
        reply: oneshot::Sender<AdminAnswer>,
    },
    Request {
        credentials: Credentials,
        body: Bytes,
        reply: oneshot::Sender<AdminAnswer>,
    },
    /// `GET /metrics` on the scrape listener: no credentials asked.
    Scrape { reply: oneshot::Sender<AdminAnswer> },
    /// An `/api/v4` request, authorized from its head like V1's.
    RequestV4 {
        credentials: Credentials,
        method: String,
        path: String,
        query: String,
        body: Bytes,
        reply: oneshot::Sender<AdminAnswer>,
    },
}

/// The core's answer, ready for HTTP.
pub(crate) enum AdminAnswer {
    /// The head's credentials are good: read the body.
    Proceed,
    Reply {
        status: u16,
        body: Bytes,
        content_type: &'static str,
        challenge: Option<&'static str>,
    },
}

/// What the server needs to know, fixed until a restart.
pub(crate) struct HttpSettings {
    pub max_body: usize,
    pub limit_conn: usize,
    pub jwt: Option<JwtKey>,
}

/// The RS256 public key and the issuer NanoMQ expects: the key file's name.
pub(crate) struct JwtKey {
    key: jsonwebtoken::DecodingKey,
    issuer: String,
}

impl JwtKey {
    pub fn load(path: &Path) -> Result<JwtKey, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("http_server.jwt.public.keyfile {}: {e}", path.display()))?;
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map_err(|e| {
            format!(
                "http_server.jwt.public.keyfile {}: not an RSA public key in PEM form: {e}",
                path.display()
            )
        })?;
        let issuer = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(JwtKey { key, issuer })
    }

    fn verify(&self, token: &str) -> JwtVerdict {
        #[derive(Deserialize)]
        struct Claims {
            #[allow(dead_code)]
            iss: String,
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.leeway = 0;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &validation) {
            Ok(_) => JwtVerdict::Valid,
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                JwtVerdict::Expired
            }
            Err(e) => {
                debug!(error = %e, "JWT rejected");
                JwtVerdict::Invalid
            }
        }
    }
}

/// Most admin connections open at once, authenticated or not; beyond this new ones are
/// closed at once. Unauthenticated ones last at most [`HEADER_TIMEOUT`].
const MAX_OPEN: usize = 512;
/// Most admin connections open at once from one address.
const MAX_OPEN_PER_ADDRESS: usize = 128;
/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An authorized request's body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// No admin connection lives longer.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Connection slots: every connection holds an open slot (bounded overall and per address);
/// one that has sent an authorized request also holds one of `http_server.limit_conn`
/// authenticated slots, so clients that never authenticate cannot lock real ones out.
struct Slots {
    open: Arc<Semaphore>,
    /// Replaced (not resized) when `limit_conn` changes: connections keep the permit they
    /// hold on the old one until they close.
    authenticated: std::sync::Mutex<(usize, Arc<Semaphore>)>,
    per_address: std::sync::Mutex<std::collections::BTreeMap<std::net::IpAddr, usize>>,
}

/// An open connection's claim on its address's count; released on drop.
struct AddressClaim {
    slots: Arc<Slots>,
    ip: std::net::IpAddr,
}

impl Drop for AddressClaim {
    fn drop(&mut self) {
        if let Ok(mut map) = self.slots.per_address.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Slots {
    fn resize(&self, limit: usize) {
        if let Ok(mut held) = self.authenticated.lock()
            && held.0 != limit
        {
            *held = (limit, Arc::new(Semaphore::new(limit)));
        }
    }

    fn claim_address(self: &Arc<Slots>, ip: std::net::IpAddr) -> Option<AddressClaim> {
        let mut map = self.per_address.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_OPEN_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressClaim {
            slots: self.clone(),
            ip,
        })
    }
}

/// Per connection: the authenticated slot, once taken.
#[derive(Default)]
struct ConnState {
    authenticated: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

/// Serves until the task is aborted.
pub(crate) async fn serve(
    listener: Box<dyn crate::net::Listener>,
    calls: mpsc::Sender<AdminCall>,
    settings: tokio::sync::watch::Receiver<Arc<HttpSettings>>,
    readiness: Arc<Readiness>,
    gate: Arc<crate::limits::ConnGate>,
) {
    let host: Arc<str> = health::host_name().into();
    let limit = settings.borrow().limit_conn.max(1);
    let slots = Arc::new(Slots {
        open: Arc::new(Semaphore::new(MAX_OPEN)),
        authenticated: std::sync::Mutex::new((limit, Arc::new(Semaphore::new(limit)))),
        per_address: Default::default(),
    });
    let mut refused = RefusalLog::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Counted and logged with the MQTT listeners' errors, once per interval.
                gate.note_accept_error(&e, tokio::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(open) = slots.open.clone().try_acquire_owned() else {
            refused.note(peer, "too many admin connections open");
            continue;
        };
        let Some(claim) = slots.claim_address(peer.ip()) else {
            refused.note(peer, "too many admin connections from this address");
            continue;
        };
        let calls = calls.clone();
        // A reload may have changed the settings: each connection takes the latest.
        let settings = settings.borrow().clone();
        slots.resize(settings.limit_conn.max(1));
        let slots = slots.clone();
        let readiness = readiness.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let _held = (open, claim);
            let state = Arc::new(ConnState::default());
            let service = service_fn(move |req| {
                let calls = calls.clone();
                let settings = settings.clone();
                let slots = slots.clone();
                let state = state.clone();
                let readiness = readiness.clone();
                let host = host.clone();
                async move {
                    // Health first: no credentials, no core, no body.
                    if let Some(reply) = health::endpoint(req.uri().path(), &readiness, &host) {
                        return Ok::<_, Infallible>(health_response(req.method(), reply));
                    }
                    // The dashboard's files: static, the same for everyone.
                    if let Some(response) = crate::dashboard::serve(req.method(), req.uri().path())
                    {
                        return Ok(response);
                    }
                    Ok(handle(req, peer, &calls, &settings, &slots, &state, &readiness).await)
                }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// Scrape connections open at once on the metrics listener.
const MAX_SCRAPERS: usize = 16;

/// The scrape listener (`metrics.listen`): `GET /metrics` and nothing else, without
/// credentials, so it belongs on an address only the monitoring system reaches.
pub(crate) async fn serve_metrics(
    listener: Box<dyn crate::net::Listener>,
    calls: mpsc::Sender<AdminCall>,
    readiness: Arc<Readiness>,
) {
    let open = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut refused = RefusalLog::default();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused.note(peer, "too many metrics connections open");
            continue;
        };
        let calls = calls.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let calls = calls.clone();
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(scrape(&req, &calls, &readiness).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

async fn scrape(
    req: &Request<Incoming>,
    calls: &mpsc::Sender<AdminCall>,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain_error(404, 102, "not found: this listener serves /metrics only");
    }
    if req.method() != hyper::Method::GET {
        return plain_error(405, 102, "method not allowed: GET /metrics");
    }
    if !readiness.core_restored() {
        return plain_error(
            503,
            102,
            "the broker is starting: its store is being recovered",
        );
    }
    let (reply, answer) = oneshot::channel();
    match ask(Api::V4, calls, AdminCall::Scrape { reply }, answer).await {
        Ok(answer) => reply_response(answer, Api::V4, false),
        Err(response) => response,
    }
}

/// Refused connections are counted and logged at most once a minute.
#[derive(Default)]
struct RefusalLog {
    count: u64,
    since_log: u64,
    last_log: Option<std::time::Instant>,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, why: &str) {
        self.count += 1;
        self.since_log += 1;
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            warn!(%peer, refused = self.since_log, total = self.count, "admin API connection refused: {why}");
            self.since_log = 0;
            self.last_log = Some(std::time::Instant::now());
        }
    }
}

fn json_response(
    status: u16,
    body: Bytes,
    challenge: Option<&'static str>,
) -> Response<Full<Bytes>> {
    typed_response(status, body, "application/json", challenge)
}

fn typed_response(
    status: u16,
    body: Bytes,
    content_type: &'static str,
    challenge: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// A health endpoint's answer; they only read, so only GET and HEAD.
fn health_response(method: &hyper::Method, reply: health::HealthReply) -> Response<Full<Bytes>> {
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        let mut response = Response::new(Full::new(Bytes::from_static(b"method not allowed")));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    // Probes want the state now, never a cached one.
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// Which API a request is for: their errors have different shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    V1,
    V4,
}

fn plain_error(status: u16, code: u16, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": code, "seq": 0, "message": message});
    json_response(status, Bytes::from(body.to_string()), None)
}

/// An error answered here: V1's shape, or v4's `{"code":N}` alone.
fn api_error(api: Api, status: u16, code: u16, message: &str) -> Response<Full<Bytes>> {
    match api {
        Api::V1 => plain_error(status, code, message),
        Api::V4 => {
            debug!(status, code, "admin API v4: {message}");
            let body = serde_json::json!({ "code": code });
            json_response(status, Bytes::from(body.to_string()), None)
        }
    }
}

/// A browser request from another site (its `Origin` is not this server) is refused, so a
/// page elsewhere cannot drive the API with credentials the browser remembers.
fn cross_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return false;
    };
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        let rest = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))?;
        Some(rest.trim_end_matches('/'))
    });
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

async fn ask(
    api: Api,
    calls: &mpsc::Sender<AdminCall>,
    call: AdminCall,
    answer: oneshot::Receiver<AdminAnswer>,
) -> Result<AdminAnswer, Response<Full<Bytes>>> {
    if calls.send(call).await.is_err() {
        return Err(api_error(api, 503, 102, "the broker is shutting down"));
    }
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok(a)) => Ok(a),
        _ => Err(api_error(api, 500, 102, "the broker did not answer")),
    }
}

fn reply_response(answer: AdminAnswer, api: Api, browser: bool) -> Response<Full<Bytes>> {
    match answer {
        AdminAnswer::Reply {
            status,
            body,
            content_type,
            challenge,
        } => {
            // A page's script (X-Requested-With) handles a v4 401 itself: without the
            // challenge the browser shows no credentials dialog of its own. V1 is unchanged.
            let challenge = challenge.filter(|_| !(browser && api == Api::V4));
            let body = match (api, status) {
                (Api::V4, 401) => tidemq_core::admin::v4::reshape_error(&body),
                _ => body,
            };
            typed_response(status, body, content_type, challenge)
        }
        AdminAnswer::Proceed => api_error(api, 500, 102, "the broker did not answer"),
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    calls: &mpsc::Sender<AdminCall>,
    settings: &HttpSettings,
    slots: &Slots,
    state: &ConnState,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    // `/metrics` is `/api/v4/prometheus` under the name scrapers expect, with the same auth.
    let path = match req.uri().path() {
        "/metrics" => "/api/v4/prometheus",
        path => path,
    };
    let api = if path == "/api/v1" || path == "/api/v1/" {
        Api::V1
    } else if path == "/api/v4" || path.starts_with("/api/v4/") {
        Api::V4
    } else {
        return plain_error(404, 102, "not found: the API is at /api/v1 and /api/v4");
    };
    let browser = req.headers().contains_key("x-requested-with");
    // The admin listener serves health during recovery; the core takes no request before
    // it holds the recovered state.
    if !readiness.core_restored() {
        return api_error(
            api,
            503,
            102,
            "the broker is starting: its store is being recovered",
        );
    }
    if cross_origin(&req) {
        return api_error(api, 403, 102, "cross-origin request refused");
    }
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let jwt = match (&settings.jwt, authorization.as_deref()) {
        (Some(key), Some(header)) => scheme_token(header, "bearer").map(|t| key.verify(t)),
        _ => None,
    };
    let credentials = Credentials { authorization, jwt };
    // The head first: no body is read from a client that is not authorized.
    let (reply, answer) = oneshot::channel();
    let call = AdminCall::Authorize {
        credentials: credentials.clone(),
        reply,
    };
    match ask(api, calls, call, answer).await {
        Ok(AdminAnswer::Proceed) => {}
        Ok(refused) => return reply_response(refused, api, browser),
        Err(response) => return response,
    }
    if let Ok(mut held) = state.authenticated.lock()
        && held.is_none()
    {
        let semaphore = match slots.authenticated.lock() {
            Ok(held) => held.1.clone(),
            Err(_) => return api_error(api, 500, 102, "admin API state poisoned"),
        };
        match semaphore.try_acquire_owned() {
            Ok(permit) => *held = Some(permit),
            Err(_) => {
                debug!(%peer, "admin API request refused: http_server.limit_conn reached");
                return api_error(
                    api,
                    503,
                    102,
                    "too many admin connections (http_server.limit_conn)",
                );
            }
        }
    }
    let method = req.method().as_str().to_owned();
    let path = path.to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = Limited::new(req.into_body(), settings.max_body).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "admin API body refused");
            return api_error(
                api,
                413,
                108,
                &format!(
                    "request body larger than http_server.max_body ({} bytes) or unreadable",
                    settings.max_body
                ),
            );
        }
        Err(_) => {
            debug!(%peer, "admin API body too slow");
            return api_error(api, 408, 102, "the request body did not arrive in time");
        }
    };
    let (reply, answer) = oneshot::channel();
    let call = match api {
        Api::V1 => AdminCall::Request {
            credentials,
            body,
            reply,
        },
        Api::V4 => AdminCall::RequestV4 {
            credentials,
            method,
            path,
            query,
            body,
            reply,
        },
    };
    match ask(api, calls, call, answer).await {
        Ok(answer) => reply_response(answer, api, browser),
        Err(response) => response,
    }
}
