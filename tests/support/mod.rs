//! Black-box test support: spawns the real `fxgate` binary (gateway and sandbox) as child
//! processes on loopback port 0, learns their ports from the one JSON line each prints on
//! stdout, and talks to them over real sockets. Logs go to a file per gateway so tests can
//! check them (for secrets, say). Children are killed on drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub mod egress;
pub mod fixture;
pub mod proxy;
pub mod sdk;
pub mod topology;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use fixture::{
    caller, gamma, list, redis_store, redis_store_at, some, standard, Edit, TestConfig,
};
#[allow(unused_imports)]
pub use fxgate::config::file::{ClientFile, CorpFile, FileConfig, KeyFile, StoreFile};
#[allow(unused_imports)]
pub use fxgate::sandbox::{Faults, ScriptedAnswer};

pub const ALPHA_KEY: &str = "alpha-key-7d1f0c2e9b";
pub const BETA_KEY: &str = "beta-key-4a8e2b6f13";
pub const APP_SECRET: &str = "sandbox-secret";

/// A tiny valid-looking JPEG head followed by `len` bytes of a pattern seeded by `seed`.
pub fn jpeg(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..len.saturating_sub(4)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// A JPEG whose bytes differ for every `n`, so dedupe never merges two of them.
pub fn unique_jpeg(len: usize, n: u32) -> Vec<u8> {
    let mut v = jpeg(len, 0);
    v[4..8].copy_from_slice(&n.to_le_bytes());
    v
}

/// `sha-256=:<base64>:` of `bytes`, as `Repr-Digest` carries it (RFC 9530).
pub fn repr_digest(bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
    )
}

/// The value of one series (`name{labels}` exactly as scraped, labels in alphabetical order)
/// in a Prometheus text scrape; 0 when absent.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub fn read_listening(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "listening" {
                    let _ = tx.send(v);
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("child printed its listening line")
}

/// A sandbox process.
pub struct Sandbox {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Sandbox {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fxgate"))
            .args(["sandbox", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sandbox");
        let line = read_listening(&mut child);
        let url = format!("http://{}", line["sandbox"].as_str().expect("sandbox addr"));
        Self {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.get_json("/_sandbox/stats").await
    }

    /// Waits (server-side, no polling) until `counter` reaches `value`, then returns the stats.
    pub async fn wait(&self, counter: &str, value: u64) -> serde_json::Value {
        await_counter(&self.http, &self.url, counter, value).await
    }

    pub async fn faults(&self, faults: Faults) {
        let r: serde_json::Value = self
            .http
            .post(format!("{}/_sandbox/faults", self.url))
            .json(&faults)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["errorCode"], 0, "{r}");
    }

    pub async fn media(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/_sandbox/media/{id}")).await
    }

    /// What the File Service stored under `npath`.
    pub async fn file(&self, npath: &str) -> serde_json::Value {
        self.get_json(&format!("/_sandbox/files/{npath}")).await
    }

    pub async fn tokens(&self) -> Vec<String> {
        self.get_json("/_sandbox/tokens").await
    }

    /// The business calls it received, oldest first (path, query, headers, body).
    pub async fn received(&self) -> Vec<serde_json::Value> {
        self.get_json("/_sandbox/received").await
    }

    /// The messages `/cgi/message/send` accepted.
    pub async fn messages(&self) -> Vec<serde_json::Value> {
        self.get_json("/_sandbox/messages").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway process.
pub struct Gateway {
    child: Child,
    pub url: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Gateway {
    pub fn spawn(cfg: &FileConfig) -> Self {
        Self::spawn_in(tempfile::tempdir().unwrap(), cfg)
    }

    /// Spawns with the config written into `dir` (which may hold certificates).
    pub fn spawn_in(dir: tempfile::TempDir, cfg: &FileConfig) -> Self {
        Self::spawn_text(dir, &cfg.toml())
    }

    /// Spawns from config text as written (for what a typed config cannot say).
    pub fn spawn_text(dir: tempfile::TempDir, toml: &str) -> Self {
        Self::spawn_env(dir, toml, &[])
    }

    /// Spawns with `env` added to a process environment without any proxy setting of the
    /// machine the tests run on.
    pub fn spawn_env(dir: tempfile::TempDir, toml: &str, env: &[(&str, &str)]) -> Self {
        let cfg = dir.path().join("fxgate.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.path().join("fxgate.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fxgate"));
        for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
            command.env_remove(var).env_remove(var.to_lowercase());
        }
        let mut child = command
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn fxgate");
        let line = read_listening(&mut child);
        let scheme = if toml.contains("tls_cert =") {
            "https"
        } else {
            "http"
        };
        Self {
            url: format!("{scheme}://{}", line["listen"].as_str().unwrap()),
            admin: format!("http://{}", line["admin"].as_str().unwrap()),
            child,
            dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the gateway process so far, in KiB (Linux `VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// Resident memory of the gateway process now, in KiB (Linux `VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("the field in /proc status")
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.admin))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the config file the gateway was started from (for reload tests).
    pub fn rewrite_config(&self, cfg: &FileConfig) {
        self.rewrite_text(&cfg.toml());
    }

    /// Replaces the config file with `toml` as written (a deliberately broken file).
    pub fn rewrite_text(&self, toml: &str) {
        std::fs::write(self.dir.path().join("fxgate.toml"), toml).unwrap();
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn admin_clients(&self) -> serde_json::Value {
        reqwest::get(format!("{}/admin/clients", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn upload_url(&self) -> String {
        format!("{}/media/upload/message", self.url)
    }

    /// `POST /admin/reload`.
    pub async fn reload(&self) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/admin/reload", self.admin))
            .send()
            .await
            .unwrap()
    }

    /// Returns once `/readyz` says the Redis store is reachable (at most 15 s; the store's
    /// supervisor reconnects on its own, so this polls).
    pub async fn until_store_ok(&self) {
        self.until_readyz("store redis: ok", Duration::from_secs(15))
            .await;
    }

    /// Polls `/readyz?verbose` (for at most `within`) until it contains `needle`; the text.
    pub async fn until_readyz(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let text = reqwest::get(format!("{}/readyz?verbose", self.admin))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never `{needle}`: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pair` once the gateway holds its corp token: the sandbox issued one, and an upload (which
/// awaits the token's publication) went through.
pub async fn pair_holding_token() -> (Sandbox, Gateway) {
    let (sandbox, gw) = pair(&[], |_| {});
    sandbox.wait("tokens_issued", 1).await;
    let (status, _, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(100, 1),
        "x.jpg",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (sandbox, gw)
}

/// A sandbox plus a gateway in front of it, on the standard config after `edit`.
pub fn pair(sandbox_args: &[&str], edit: impl FnOnce(&mut FileConfig)) -> (Sandbox, Gateway) {
    let sandbox = Sandbox::spawn(sandbox_args);
    let gateway = Gateway::spawn(&standard(&sandbox.url).with(edit));
    (sandbox, gateway)
}

pub fn client() -> reqwest::Client {
    // Idle pooled connections are dropped before the gateway closes them (it waits at most
    // `request_header_timeout`, 10 s in tests, for the next head): a connection reused just
    // as the server closes it fails the request, which a loaded machine made happen.
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

/// Uploads `bytes` as Fxiaoke's own `curl -F media=@name` form and returns (status, headers, JSON).
pub async fn upload_multipart(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    bytes: Vec<u8>,
    name: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str("image/jpeg")
        .unwrap();
    let form = reqwest::multipart::Form::new().part("media", part);
    let resp = http
        .post(url)
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// TLS settings (`--tls-*`): the port then speaks TLS only.
    tls: Vec<String>,
    /// More settings (`--cluster-enabled yes`, `--replicaof …`); `{port}` stands for the port.
    extra: Vec<String>,
}

impl RedisServer {
    /// On a port free a moment ago: when another process took it in between, redis-server
    /// exits at once and another port is tried (a few times).
    pub fn start() -> Self {
        Self::start_with(Vec::new(), Vec::new())
    }

    /// With more settings (`{port}` in one stands for the port it gets).
    pub fn start_args(extra: &[&str]) -> Self {
        Self::start_with(Vec::new(), extra.iter().map(|a| a.to_string()).collect())
    }

    /// With `tls` (`--tls-cert-file`, …) on its port, which then speaks TLS only.
    pub fn start_tls(tls: &[(&str, &str)]) -> Self {
        Self::start_tls_args(tls, &[])
    }

    /// TLS only, with more settings.
    pub fn start_tls_args(tls: &[(&str, &str)], extra: &[&str]) -> Self {
        let args = tls
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.to_string()])
            .collect();
        Self::start_with(args, extra.iter().map(|a| a.to_string()).collect())
    }

    fn start_with(tls: Vec<String>, extra: Vec<String>) -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut s = Self {
                child: None,
                port,
                tls: tls.clone(),
                extra: extra.clone(),
            };
            if s.try_start() {
                return s;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port) and returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Starts it on `port`; whether it became ready (false: it exited first).
    fn try_start(&mut self) -> bool {
        let port = self.port.to_string();
        let ports = if self.tls.is_empty() {
            vec!["--port", &port]
        } else {
            vec!["--port", "0", "--tls-port", &port]
        };
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|a| a.replace("{port}", &port))
            .collect();
        let mut child = Command::new("redis-server")
            .args(ports)
            .args(&self.tls)
            .args(&extra)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install it (apt-get install -y redis-server)");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(true);
                }
            }
            // Its output ended: it exited (a port taken, say) or was killed.
            let _ = tx.send(false);
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("redis-server answered within 20 s");
        if ready {
            self.child = Some(child);
        } else {
            let _ = child.wait();
        }
        ready
    }

    /// Runs one `redis-cli` command against it (as its admin) and returns the answer.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian: redis-tools, installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SIGKILL: gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends an upload head with `Content-Length: len` and `Expect: 100-continue` by `key` to
/// `path` over a raw socket, and returns the first answer (no body byte is ever sent).
pub async fn expect_continue(gw: &Gateway, key: &str, path: &str, len: u64) -> String {
    expect_continue_with(gw, key, path, len, "Content-Type: image/jpeg\r\n").await
}

/// As `expect_continue`, with `headers` (whole lines, each ending in CRLF) in the head.
pub async fn expect_continue_with(
    gw: &Gateway,
    key: &str,
    path: &str,
    len: u64,
    headers: &str,
) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         {headers}Content-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Caller gamma's entry in `/admin/clients`.
pub fn gamma_usage(clients: &serde_json::Value) -> serde_json::Value {
    admin_entry(clients, "gamma")
}

/// Caller `name`'s entry in `/admin/clients`.
pub fn admin_entry(clients: &serde_json::Value, name: &str) -> serde_json::Value {
    clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no caller {name} in {clients}"))
}

pub const GAMMA_KEY: &str = "gamma-key-90c3d5e7a1";

/// A raw body of `content_type` posted to `url` by `key`: the status and the JSON answer
/// (`Null` when the answer is not JSON).
pub async fn raw_post(
    url: &str,
    key: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A raw upload of `file` to `url` (a message route) claiming its digest; the status and the
/// JSON answer.
pub async fn claim_upload_status(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    file: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{url}?filename=f.jpg"))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .header("repr-digest", repr_digest(&file))
        .body(file)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A raw upload of `file` to `url` (a message route) claiming its digest; the JSON answer.
pub async fn claim_upload(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    file: Vec<u8>,
) -> serde_json::Value {
    claim_upload_status(http, url, key, file).await.1
}

/// A gateway and a sandbox running in this process and sharing `clock`, talking over real
/// loopback sockets: for tests of time (token lifetimes, backoff), which move the clock by hand
/// instead of sleeping.
pub struct InProcess {
    pub clock: std::sync::Arc<fxgate::clock::ManualClock>,
    pub sandbox: fxgate::sandbox::SandboxHandle,
    pub running: fxgate::app::Running,
    pub url: String,
    pub admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    /// The config in force, which `reload_with` edits.
    cfg: std::sync::Mutex<FileConfig>,
}

impl InProcess {
    /// Starts a sandbox with `opts` (its clock replaced by a fresh `ManualClock`) and a gateway
    /// on the standard test config after `edit`.
    pub async fn spawn(
        opts: fxgate::sandbox::SandboxOptions,
        edit: impl FnOnce(&mut FileConfig),
    ) -> Self {
        Self::spawn_faulted(opts, edit, Faults::default()).await
    }

    /// As `spawn`, with `faults` scripted in the sandbox before the gateway starts (so they
    /// meet its very first token call).
    pub async fn spawn_faulted(
        mut opts: fxgate::sandbox::SandboxOptions,
        edit: impl FnOnce(&mut FileConfig),
        faults: Faults,
    ) -> Self {
        let clock = fxgate::clock::ManualClock::at_now();
        opts.clock = clock.clone();
        let sandbox = fxgate::sandbox::spawn("127.0.0.1:0".parse().unwrap(), opts)
            .await
            .expect("sandbox starts");
        let http = reqwest::Client::new();
        let scripted = http
            .post(format!("{}/_sandbox/faults", sandbox.url()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(scripted.status().is_success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxgate.toml");
        let file = standard(&sandbox.url()).with(edit);
        std::fs::write(&path, file.toml()).unwrap();
        let cfg = fxgate::Config::load(&path, Some(Default::default())).expect("config loads");
        let running = fxgate::app::spawn_with(cfg, clock.clone())
            .await
            .expect("gateway starts");
        Self {
            url: format!("http://{}", running.addr),
            admin: format!("http://{}", running.admin_addr),
            clock,
            sandbox,
            running,
            http,
            _dir: dir,
            cfg: std::sync::Mutex::new(file),
        }
    }

    pub fn upload_url(&self) -> String {
        format!("{}/media/upload/message", self.url)
    }

    /// Scripts the sandbox's faults (replacing the ones before).
    pub async fn faults(&self, faults: Faults) {
        let resp = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox.url()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    /// Edits the config in force (edits add up), writes it and reloads it through
    /// `POST /admin/reload`: the answer's status and body.
    pub async fn reload_with(
        &self,
        edit: impl FnOnce(&mut FileConfig),
    ) -> (u16, serde_json::Value) {
        let toml = {
            let mut cfg = self.cfg.lock().unwrap();
            edit(&mut cfg);
            cfg.toml()
        };
        std::fs::write(self._dir.path().join("fxgate.toml"), toml).unwrap();
        let r = self
            .http
            .post(format!("{}/admin/reload", self.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Moves the shared clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// The sandbox's counters.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.sandbox.stats()).unwrap()
    }

    /// Waits (server-side, no polling) until the sandbox's `counter` reaches `value`.
    pub async fn wait(&self, counter: &str, value: u64) -> serde_json::Value {
        await_counter(&self.http, &self.sandbox.url(), counter, value).await
    }

    async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
    }

    pub async fn ready(&self) -> bool {
        self.admin_get("/readyz").await.status() == 200
    }

    pub async fn admin_clients(&self) -> serde_json::Value {
        self.admin_get("/admin/clients").await.json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }
}

/// Asks the sandbox at `url` to answer once `counter` reaches `value` (at most 20 s), and
/// checks that it did.
async fn await_counter(
    http: &reqwest::Client,
    url: &str,
    counter: &str,
    value: u64,
) -> serde_json::Value {
    let stats: serde_json::Value = http
        .get(format!(
            "{url}/_sandbox/stats?until={counter}:{value}&timeout_ms=20000"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stats[counter].as_u64().unwrap() >= value,
        "{counter} never reached {value}: {stats}"
    );
    stats
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it, as
/// PEM files in `dir`; and a second, unrelated CA.
pub fn redis_pki(dir: &std::path::Path) -> impl Fn(&str) -> String + '_ {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_of = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap(), key)
    };
    let (ca, ca_key) = ca_of("redis test CA");
    let (other, _) = ca_of("some other CA");
    let signed = |sans: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = signed(vec!["127.0.0.1".into()], "redis");
    let (client, client_key) = signed(Vec::new(), "fxgate");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("other-ca.pem", other.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    move |name: &str| dir.join(name).display().to_string()
}

/// `total` bytes of a JPEG-headed pattern in `chunk`-sized pieces; `seed` makes files distinct
/// (so dedupe does not merge them).
pub fn pattern_stream(
    total: usize,
    chunk: usize,
    seed: u8,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut sent = 0usize;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if sent >= total {
            return None;
        }
        let n = chunk.min(total - sent);
        let mut v: Vec<u8> = (0..n).map(|i| ((sent + i) % 251) as u8).collect();
        if sent == 0 {
            v[..5].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0, seed]);
        }
        sent += n;
        Some(Ok(v))
    }))
}

pub fn pattern_sha256(total: usize, seed: u8) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < total {
        let n = buf.len().min(total - done);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((done + i) % 251) as u8;
        }
        if done == 0 {
            buf[..5].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0, seed]);
        }
        h.update(&buf[..n]);
        done += n;
    }
    hex::encode(h.finalize())
}

/// `fxgate check-config` on `cfg` written into `dir`: its exit code and stderr.
pub fn check_config(dir: &std::path::Path, cfg: &FileConfig) -> (Option<i32>, String) {
    let path = dir.join("fxgate.toml");
    std::fs::write(&path, cfg.toml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fxgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Posts one distinct `size`-byte PDF to each of `urls` at once (as alpha), asserts every one
/// succeeds, and answers how much the gateway's peak RSS grew per upload (KiB), logging it.
pub async fn rss_per_concurrent_upload(gw: &Gateway, urls: Vec<String>, size: usize) -> u64 {
    let n = urls.len();
    let before = gw.rss_kib();
    let tasks = urls.into_iter().enumerate().map(|(i, url)| {
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(ALPHA_KEY)
                .header("content-type", "application/pdf")
                .body(jpeg(size, i as u8))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    });
    for r in futures_util::future::join_all(tasks).await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }
    let peak = gw.peak_rss_kib();
    let each = (peak - before) / n as u64;
    eprintln!("{n} uploads held by a slow reader: RSS {before} KiB before, peak {peak} KiB: {each} KiB each");
    each
}
