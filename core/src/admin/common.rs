//! What both admin APIs share: credentials and their checks, replies, result codes.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{Engine, alphabet};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::config::{Config, HttpAuthType};

/// Shown instead of secrets; sending it back in a set-configuration keeps the secret.
pub const MASK: &str = "******";

/// Result codes, shared by both APIs.
pub mod code {
    pub const OK: u16 = 0;
    /// v4: an unknown section or action.
    pub const RPC_ERROR: u16 = 101;
    pub const UNKNOWN: u16 = 102;
    pub const WRONG_CREDENTIALS: u16 = 103;
    pub const MISSING_CREDENTIALS: u16 = 104;
    pub const MISSING_PARAMETER: u16 = 107;
    pub const BAD_PARAMETER: u16 = 108;
    pub const NOT_JSON: u16 = 109;
    /// v4: no such client (or not connected).
    pub const CLIENT_OFFLINE: u16 = 112;
    /// v4: no such bridge (NanoMQ's "illegal subject").
    pub const ILLEGAL_SUBJECT: u16 = 115;
    pub const TOKEN_EXPIRED: u16 = 116;
    /// As NanoMQ's v4 API: the configuration file could not be written.
    pub const CONFIG_WRITE_FAILED: u16 = 118;
}

/// The outcome of verifying a `Bearer` token, done by the runtime (it holds the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtVerdict {
    Valid,
    Expired,
    Invalid,
}

/// What the client presented.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The runtime's verdict on a `Bearer` token, if there was one.
    pub jwt: Option<JwtVerdict>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The `WWW-Authenticate` challenge for a 401.
    pub challenge: Option<&'static str>,
}

/// Builds the JSON body with NanoMQ's key order: code, seq, rep, data.
pub fn body(code: u16, seq: &Value, rep: Option<i64>, data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("code".into(), json!(code));
    m.insert("seq".into(), seq.clone());
    if let Some(rep) = rep.filter(|r| *r > 0) {
        m.insert("rep".into(), json!(rep));
    }
    if let Some(data) = data {
        m.insert("data".into(), data);
    }
    Value::Object(m)
}

pub(crate) fn error(status: u16, code: u16, seq: &Value, rep: Option<i64>, message: &str) -> Reply {
    let mut b = body(code, seq, rep, None);
    if let Value::Object(m) = &mut b {
        m.insert("message".into(), json!(message));
    }
    Reply {
        status,
        body: b,
        challenge: None,
    }
}

/// Authentication of a request head, before its body is read: a refusal carries `seq` 0.
pub fn authorize_head(config: &Config, credentials: &Credentials) -> Result<(), Reply> {
    check_credentials(config, credentials, &json!(0), None)
}

pub(crate) fn check_credentials(
    config: &Config,
    credentials: &Credentials,
    seq: &Value,
    req: Option<i64>,
) -> Result<(), Reply> {
    let http = &config.http_server;
    let fail = |code: u16, challenge: &'static str, message: &str| {
        let mut reply = error(401, code, seq, req, message);
        reply.challenge = Some(challenge);
        reply
    };
    match http.auth_type {
        HttpAuthType::NoAuth => Ok(()),
        HttpAuthType::Basic => {
            let challenge = "Basic realm=\"tidemq\"";
            let Some((user, pass)) = credentials
                .authorization
                .as_deref()
                .and_then(basic_credentials)
            else {
                return Err(fail(
                    code::MISSING_CREDENTIALS,
                    challenge,
                    "Basic credentials are required",
                ));
            };
            // Compare both halves fully either way: no early exit on the user name.
            let user_ok = constant_time_eq(user.as_bytes(), http.username.as_bytes());
            let pass_ok = constant_time_eq(pass.as_bytes(), http.password.as_bytes());
            if user_ok & pass_ok {
                Ok(())
            } else {
                Err(fail(
                    code::WRONG_CREDENTIALS,
                    challenge,
                    "wrong user name or password",
                ))
            }
        }
        HttpAuthType::Jwt => {
            let challenge = "Bearer realm=\"tidemq\"";
            let has_bearer = credentials
                .authorization
                .as_deref()
                .and_then(|h| scheme_token(h, "bearer"))
                .is_some();
            if !has_bearer {
                return Err(fail(
                    code::MISSING_CREDENTIALS,
                    challenge,
                    "a Bearer token is required",
                ));
            }
            match credentials.jwt {
                Some(JwtVerdict::Valid) => Ok(()),
                Some(JwtVerdict::Expired) => {
                    Err(fail(code::TOKEN_EXPIRED, challenge, "token expired"))
                }
                _ => Err(fail(code::WRONG_CREDENTIALS, challenge, "invalid token")),
            }
        }
    }
}

/// `Scheme token` with a case-insensitive scheme (RFC 9110 §11.1).
pub fn scheme_token<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (s.eq_ignore_ascii_case(scheme) && !token.is_empty()).then_some(token)
}

/// The user name and password of a `Basic` header, if well formed.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let token = scheme_token(header, "basic")?;
    let decoded = base64_decode(token)?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Standard base64 with padding (RFC 4648 §4); `None` for anything else. Bits past the last
/// byte are ignored, as they always were here.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    if input.is_empty() {
        return None;
    }
    LENIENT.decode(input).ok()
}

/// Compares secrets in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
