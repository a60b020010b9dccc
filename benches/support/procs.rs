//! Child processes for the end-to-end benchmark (the sandbox sink, the gateway, nginx), all on
//! loopback port 0 (nginx on a free port), killed on drop; plus /proc readings of their CPU
//! time and resident memory.

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

/// `GET /readyz` on `admin` (host:port) answered 200.
fn ready(admin: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The sandbox as a counting sink.
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fxgate in front of `base_url`.
pub struct Gateway {
    child: Child,
    pub url: String,
    /// Its admin listener (`/metrics`).
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn spawn(base_url: &str) -> Self {
        Self::spawn_with(base_url, "")
    }

    /// With `extra` TOML sections (a `[store]`, say) appended to the bench config.
    pub fn spawn_with(base_url: &str, extra: &str) -> Self {
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
# The benchmark measures the proxy, not Fxiaoke's allowance.
upstream_requests_per_20s = 100000000
file_service_user = "FSUID_BENCH"
[upload]
document_max_bytes = "1GiB"
file_max_bytes = "1GiB"
[[clients]]
name = "bench"
key_sha256 = "{}"
act_as = ["FSUID_BENCH"]
{extra}
"#,
            hex::encode(sha2::Sha256::digest(BENCH_KEY.as_bytes()))
        );
        std::fs::write(&path, toml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fxgate"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fxgate");
        let v = listening(&mut child);
        let admin = v["admin"].as_str().expect("admin addr").to_string();
        // Ready once it holds its token: gateways started together would otherwise fetch
        // theirs at the same moment, and the sink refuses concurrent token calls as Fxiaoke
        // does.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ready(&admin) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            url: format!("http://{}", v["listen"].as_str().expect("addr")),
            admin: format!("http://{admin}"),
            child,
            _dir: dir,
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx (Debian's `nginx-light`) as a streaming reverse proxy in front of `upstream`.
pub struct Nginx {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `None` when no nginx binary is installed. `tuned`: the client body read in 64 KiB
    /// pieces (`client_body_buffer_size 64k`, the read size fxgate uses) instead of nginx's
    /// default 16 KiB, as a careful operator would set it for uploads.
    pub fn spawn(upstream: &str, tuned: bool) -> Option<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let port = free_port();
        let upstream = upstream.trim_start_matches("http://");
        let buffers = if tuned {
            "client_body_buffer_size 64k;"
        } else {
            ""
        };
        let conf = format!(
            r#"worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream sink {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        {buffers}
        # nginx answering by itself once it has read the body: the floor for a dedupe hit
        # by content (a repeat answered without going upstream).
        location /return/ {{
            return 200 '{{"errorCode":0,"errorMessage":"success","mediaId":"bench"}}';
        }}
        location / {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
        // Workers run as `nobody` when started as root: let them write their temp paths.
        let _ = Command::new("chmod").args(["0777", &d]).status();
        let child = Command::new(bin)
            .args([
                "-p",
                &d,
                "-c",
                &format!("{d}/nginx.conf"),
                "-g",
                "daemon off; user root;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    child,
                    url,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                    == Some(master)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    // SIGKILL on the master alone orphans its workers, which then live on after the bench
    // (and skew the next run's CPU readings): SIGTERM makes the master stop them first.
    fn drop(&mut self) {
        let workers = self.pids();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in workers.into_iter().skip(1) {
            // Most are gone already (the master stopped them): no noise about it.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, …].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of these processes, in seconds.
pub fn cpu_secs(pids: &[u32]) -> f64 {
    let ticks = clock_ticks();
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
            let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (u + s) / ticks
        })
        .sum()
}

/// Resident memory of these processes now, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// Busy and total CPU seconds of the whole machine so far (all cores), from /proc/stat.
pub fn machine_secs() -> (f64, f64) {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).unwrap_or(&0.0) + fields.get(4).unwrap_or(&0.0);
    ((total - idle) / ticks, total / ticks)
}

/// `redis-server` on a free loopback port, without persistence; `None` when not installed.
pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    pub fn spawn() -> Option<Self> {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    child,
                    url: format!("redis://127.0.0.1:{port}"),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
