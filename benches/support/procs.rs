//! Child processes for the end-to-end benchmark: the sandbox sink and the gateway, both the
//! `fxgate` binary built by `cargo bench`, on loopback port 0. Killed on drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

/// The benchmark caller's key.
pub const BENCH_KEY: &str = "bench-key-0f3c9a";

fn listening(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "listening" {
                    let _ = tx.send(v);
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("listening line")
}

pub struct Sandbox {
    child: Child,
    pub url: String,
}

impl Sandbox {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fxgate"))
            .args([
                "sandbox",
                "--listen",
                "127.0.0.1:0",
                "--document-max-bytes",
                "1073741824",
            ])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sandbox");
        let v = listening(&mut child);
        Self {
            url: format!("http://{}", v["sandbox"].as_str().expect("addr")),
            child,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gateway {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn spawn(base_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fxgate.toml");
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[corps.default]
base_url = "{base_url}"
app_id = "sandbox-app"
app_secret = "sandbox-secret"
permanent_code = "sandbox-permanent-code"
[upload]
document_max_bytes = "1GiB"
[[clients]]
name = "bench"
key_sha256 = "{}"
"#,
            hex::encode(sha2::Sha256::digest(BENCH_KEY.as_bytes()))
        );
        std::fs::write(&path, toml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fxgate"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fxgate");
        let v = listening(&mut child);
        Self {
            url: format!("http://{}", v["listen"].as_str().expect("addr")),
            child,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak RSS so far (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid())
    }
}

/// Peak RSS of a process so far (VmHWM), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
