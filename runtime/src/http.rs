//! The admin HTTP server (hyper, HTTP/1.1). It only carries requests: the body, the
//! `Authorization` header and a JWT verdict go to the core as one input; the core's reply
//! comes back as status and JSON.

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
use tracing::debug;

/// One admin request on its way to the core, with the channel for its answer.
pub(crate) struct AdminCall {
    pub credentials: Credentials,
    pub body: Bytes,
    pub reply: oneshot::Sender<AdminAnswer>,
}

/// The core's answer, ready for HTTP.
pub(crate) struct AdminAnswer {
    pub status: u16,
    pub body: Bytes,
    pub challenge: Option<&'static str>,
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

/// Serves until the task is aborted.
pub(crate) async fn serve(
    listener: Box<dyn crate::net::Listener>,
    calls: mpsc::Sender<AdminCall>,
    settings: Arc<HttpSettings>,
    gate: Arc<crate::limits::ConnGate>,
) {
    let permits = Arc::new(Semaphore::new(settings.limit_conn.max(1)));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "admin API connection refused: http_server.limit_conn reached");
            continue;
        };
        let calls = calls.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let calls = calls.clone();
                let settings = settings.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, &calls, &settings).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // Bounded: a client cannot hold a connection slot forever.
            let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
        });
    }
}

fn json_response(
    status: u16,
    body: Bytes,
    challenge: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

fn plain_error(status: u16, code: u16, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": code, "seq": 0, "message": message});
    json_response(status, Bytes::from(body.to_string()), None)
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    calls: &mpsc::Sender<AdminCall>,
    settings: &HttpSettings,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/api/v1" && !path.starts_with("/api/v1/") {
        return plain_error(404, 102, "not found: the API is at /api/v1");
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
    let body = match Limited::new(req.into_body(), settings.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            debug!(%peer, error = %e, "admin API body refused");
            return plain_error(
                413,
                108,
                &format!(
                    "request body larger than http_server.max_body ({} bytes) or unreadable",
                    settings.max_body
                ),
            );
        }
    };
    let (reply, answer) = oneshot::channel();
    let call = AdminCall {
        credentials: Credentials { authorization, jwt },
        body,
        reply,
    };
    if calls.send(call).await.is_err() {
        return plain_error(503, 102, "the broker is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok(a)) => json_response(a.status, a.body, a.challenge),
        _ => plain_error(500, 102, "the broker did not answer"),
    }
}
