//! NanoMQ's HTTP API V1: one `POST /api/v1` with `{"req": N, "seq": M}`, checked in
//! NanoMQ's order (envelope, credentials, request).

use serde_json::{Map, Value, json};

use super::common::{Credentials, Reply, body, check_credentials, code, error};
use crate::config::Config;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    BrokerInfo,
    TopicInfo,
    ClientInfo,
    Control(ControlAction),
    GetConfig,
    SetConfig(Value),
    TopicTree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    Restart,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub seq: Value,
    pub req: Option<i64>,
    pub object: Map<String, Value>,
}

fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// Step 1: the body must be a JSON object with integer `req` and `seq`.
pub fn parse_envelope(raw: &[u8]) -> Result<Envelope, Reply> {
    let zero = json!(0);
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(raw) else {
        return Err(error(
            400,
            code::NOT_JSON,
            &zero,
            None,
            "the body must be a JSON object",
        ));
    };
    let seq = object.get("seq").cloned();
    let req = object.get("req").cloned();
    let seq_echo = seq.clone().filter(is_integer).unwrap_or(json!(0));
    let req_echo = req.as_ref().and_then(Value::as_i64);
    match (&req, &seq) {
        (None, _) | (_, None) => Err(error(
            400,
            code::MISSING_PARAMETER,
            &seq_echo,
            req_echo,
            "req and seq are required",
        )),
        (Some(r), Some(s)) if !is_integer(r) || !is_integer(s) => Err(error(
            400,
            code::BAD_PARAMETER,
            &seq_echo,
            req_echo,
            "req and seq must be integers",
        )),
        _ => Ok(Envelope {
            seq: seq_echo,
            req: req_echo,
            object,
        }),
    }
}

/// Step 2: authentication against the configured scheme.
pub fn authenticate(
    config: &Config,
    credentials: &Credentials,
    env: &Envelope,
) -> Result<(), Reply> {
    check_credentials(config, credentials, &env.seq, env.req)
}

/// Step 3: which request it is. Unknown codes are 404 + 108, a bad req 10 action 400 + 108.
pub fn parse_request(env: &Envelope) -> Result<Request, Reply> {
    let unknown = || {
        error(
            404,
            code::BAD_PARAMETER,
            &env.seq,
            env.req,
            "unknown req code",
        )
    };
    Ok(match env.req.ok_or_else(unknown)? {
        2 => Request::BrokerInfo,
        4 => Request::TopicInfo,
        5 => Request::ClientInfo,
        10 => {
            let action = env.object.get("action").and_then(Value::as_str);
            match action.map(str::to_ascii_lowercase).as_deref() {
                Some("restart") => Request::Control(ControlAction::Restart),
                Some("stop") => Request::Control(ControlAction::Stop),
                _ => {
                    return Err(error(
                        400,
                        code::BAD_PARAMETER,
                        &env.seq,
                        env.req,
                        "action must be \"restart\" or \"stop\"",
                    ));
                }
            }
        }
        11 => Request::GetConfig,
        12 => match env.object.get("data") {
            Some(data @ Value::Object(_)) => Request::SetConfig(data.clone()),
            _ => {
                return Err(error(
                    400,
                    code::BAD_PARAMETER,
                    &env.seq,
                    env.req,
                    "data must be an object",
                ));
            }
        },
        13 => Request::TopicTree,
        _ => return Err(unknown()),
    })
}

/// A reply for a bad set-configuration.
pub fn bad_parameter(env: &Envelope, message: &str) -> Reply {
    error(400, code::BAD_PARAMETER, &env.seq, env.req, message)
}

/// A reply for a configuration that could not be written.
/// A req 10 restart whose configuration did not (wholly) take effect: 500 + 102, saying what.
pub fn restart_incomplete(seq: &Value, why: &str) -> Reply {
    error(
        500,
        code::UNKNOWN,
        seq,
        Some(10),
        &format!("the configuration was not fully applied: {why}"),
    )
}

pub fn write_failed(seq: &Value, message: &str) -> Reply {
    error(500, code::CONFIG_WRITE_FAILED, seq, Some(12), message)
}

/// A success reply.
pub fn ok(env_seq: &Value, rep: i64, data: Option<Value>) -> Reply {
    Reply {
        status: 200,
        body: body(code::OK, env_seq, Some(rep), data),
        challenge: None,
    }
}
