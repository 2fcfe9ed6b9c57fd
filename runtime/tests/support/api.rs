//! The admin API through curl, and a mosquitto remote for bridges: what the v4 end-to-end
//! tests share.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Dir, free_port, run, tool, wait_for};

/// The admin server on 127.0.0.1.
pub struct Api {
    pub port: u16,
}

pub struct Answer {
    pub status: u16,
    /// The response head, lowercased.
    pub headers: String,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

impl Api {
    /// A request with these extra curl arguments (credentials among them, or none).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>, args: &[&str]) -> Answer {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut cmd = tool("curl");
        cmd.args(["-s", "-i", "-X", method, &url, "--max-time", "10"])
            .args(args);
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "curl failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Answer {
            status: head.split(' ').nth(1).unwrap().parse().unwrap(),
            headers: head.to_ascii_lowercase(),
            text: body.to_owned(),
        }
    }

    /// A request with the default credentials.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.request(method, path, body, &["-u", "admin:public"])
    }

    pub fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path, None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        assert!(
            a.headers.contains("content-type: application/json"),
            "{path}"
        );
        a.json()
    }

    /// An answer that is exactly `{"code":code}` with this status.
    pub fn expect(&self, method: &str, path: &str, body: Option<&str>, status: u16, code: u64) {
        let a = self.call(method, path, body);
        assert_eq!(
            (a.status, a.json()),
            (status, json!({ "code": code })),
            "{method} {path} {body:?}"
        );
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let a = self.call("POST", path, Some(&body.to_string()));
        assert_eq!(a.status, 200, "POST {path}: {}", a.text);
        a.json()
    }

    /// One bridge's entry of `/api/v4/metrics` (which has no `code` key, as in NanoMQ).
    pub fn bridge_metrics(&self, name: &str) -> Value {
        let m = self.get("/api/v4/metrics");
        assert!(m.get("code").is_none(), "no code key, as NanoMQ");
        m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no bridge {name} in {m}"))
    }
}

/// A mosquitto broker as a bridge's remote, on 127.0.0.1.
pub struct Remote {
    child: Child,
    pub port: u16,
}

impl Remote {
    pub fn start(dir: &Dir) -> Remote {
        Remote::start_on(dir, free_port())
    }

    /// On `port`: a remote stopped and started again comes back where the bridge looks.
    pub fn start_on(dir: &Dir, port: u16) -> Remote {
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let conf = dir.file("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "mosquitto is missing: install the Debian package mosquitto (scripts/test does)",
            );
        wait_for("mosquitto", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Remote { child, port }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
