//! Redis as platform teams run it, started for real on loopback: a Cluster of three masters
//! (`redis-cli --cluster create`), and a master with one replica watched by three sentinels.
//! Every wait is bounded; processes are killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::RedisServer;

/// Runs `redis-cli -p port args…` and returns its answer.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_as(&[], port, args)
}

/// `redis-cli` with connection options first (`--tls`, `--cacert`, `-a`).
pub fn cli_as(options: &[String], port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(options)
        .args(args)
        .output()
        .expect("redis-cli (Debian: redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
pub fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three cluster-enabled redis-servers holding all 16384 slots between them.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!("{}/nodes-{{port}}.conf", dir.path().display());
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for n in &nodes {
            until("cluster_state:ok", Duration::from_secs(20), || {
                cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        Self { nodes, _dir: dir }
    }

    /// `host:port` of every node (fxgate's `redis_nodes`).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }
}

/// A master, its replica, and three sentinels watching them as `fxgate` (quorum 2).
pub struct Sentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16)>,
    /// `redis-cli` options for the sentinels (TLS, their password).
    sentinel_cli: Vec<String>,
    _dir: tempfile::TempDir,
}

/// TLS on every port (the CA in `ca`, the server certificate and key), a password on the
/// master and replica, and another on the sentinels.
pub struct Secured {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub password: String,
    pub sentinel_password: String,
}

impl Secured {
    fn tls_lines(&self) -> String {
        format!(
            "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
            self.cert, self.key, self.ca
        )
    }

    fn cli(&self, password: &str) -> Vec<String> {
        ["--tls", "--cacert", &self.ca, "-a", password]
            .map(String::from)
            .to_vec()
    }
}

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "fxgate";

impl Sentinels {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Over TLS with passwords (`secured`), or plain.
    pub fn start_with(secured: Option<&Secured>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A full sync writes a snapshot: into this directory, not the working one.
        let at = dir.path().display().to_string();
        let node = |more: &[&str]| {
            let mut args = vec!["--dir", &at];
            args.extend_from_slice(more);
            match secured {
                None => RedisServer::start_args(&args),
                Some(s) => {
                    let auth = [
                        "--requirepass",
                        s.password.as_str(),
                        "--masterauth",
                        s.password.as_str(),
                        "--tls-auth-clients",
                        "no",
                        "--tls-replication",
                        "yes",
                    ];
                    args.extend_from_slice(&auth);
                    let tls = [
                        ("tls-cert-file", s.cert.as_str()),
                        ("tls-key-file", s.key.as_str()),
                        ("tls-ca-cert-file", s.ca.as_str()),
                    ];
                    RedisServer::start_tls_args(&tls, &args)
                }
            }
        };
        let master = node(&[]);
        let master_port = master.port.to_string();
        let replica = node(&["--replicaof", "127.0.0.1", &master_port]);
        let node_cli = secured.map(|s| s.cli(&s.password)).unwrap_or_default();
        until("the replica in sync", Duration::from_secs(20), || {
            cli_as(&node_cli, replica.port, &["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let sentinels = (0..3)
            .map(|i| start_sentinel(dir.path(), i, master.port, secured))
            .collect();
        let set = Self {
            master,
            replica,
            sentinels,
            sentinel_cli: secured
                .map(|s| s.cli(&s.sentinel_password))
                .unwrap_or_default(),
            _dir: dir,
        };
        // Each sentinel knows the replica and the two others: a failover can be agreed on.
        for (_, port) in &set.sentinels {
            until("a sentinel quorum", Duration::from_secs(30), || {
                set.sentinel(*port, &["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .starts_with("OK 3")
                    && set
                        .sentinel(*port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                        .contains("127.0.0.1")
            });
        }
        set
    }

    fn sentinel(&self, port: u16, args: &[&str]) -> String {
        cli_as(&self.sentinel_cli, port, args)
    }

    /// `host:port` of each sentinel (fxgate's `redis_sentinels`).
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The master's port as the first sentinel says it now.
    pub fn master_port(&self) -> u16 {
        let answer = self.sentinel(
            self.sentinels[0].1,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One sentinel on a free port (another is tried when the port was taken meanwhile).
fn start_sentinel(
    dir: &std::path::Path,
    i: usize,
    master: u16,
    secured: Option<&Secured>,
) -> (Child, u16) {
    // Over TLS the sentinels listen on TLS only, need the master's password and one of their
    // own, which they also use with each other.
    let (listen, secure) = match secured {
        None => ("port", String::new()),
        Some(s) => (
            "tls-port",
            format!(
                "port 0\n{}requirepass {sp}\nsentinel sentinel-pass {sp}\n",
                s.tls_lines(),
                sp = s.sentinel_password
            ),
        ),
    };
    let auth = secured
        .map(|s| format!("sentinel auth-pass {MASTER_NAME} {}\n", s.password))
        .unwrap_or_default();
    for attempt in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join(format!("sentinel-{i}-{attempt}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{listen} {port}\n{secure}bind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n{auth}\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel (Debian: redis-sentinel or redis-server)");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("+monitor master") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        if rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no sentinel started on any of 5 free ports");
}
