//! The `fxgate` command line (design §1): `serve`, `check-config`, `sandbox`, `hash-key`, and
//! `healthcheck` for images without a shell.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use fxgate::config::{self, Config, LogFormat};
use fxgate::sandbox::{self, SandboxOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fxgate",
    version,
    about = "Authenticating streaming media gateway for the Fxiaoke OpenAPI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Exit codes: 0 drained and stopped, 1 a runtime failure, 2 the config
    /// does not load, 3 a second SIGTERM/SIGINT cut the drain short.
    Serve {
        /// Config file [default: $FXGATE_CONFIG, else config/fxgate.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config (and open every file `serve` would: TLS certificate, key and CA,
    /// secret files) and print the effective settings, secrets masked. Exit 2 when invalid.
    CheckConfig {
        /// Config file [default: $FXGATE_CONFIG, else config/fxgate.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the built-in imitation of the Fxiaoke endpoints.
    Sandbox {
        /// Address to listen on (port 0 picks a free one; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Token lifetime (Fxiaoke: 7200s).
        #[arg(long, default_value = "7200s", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// Accept this app id.
        #[arg(long, default_value = "sandbox-app")]
        app_id: String,
        /// Accept this app secret.
        #[arg(long, default_value = "sandbox-secret")]
        app_secret: String,
        /// Accept this permanent code.
        #[arg(long, default_value = "sandbox-permanent-code")]
        permanent_code: String,
        /// Time the token endpoint takes to answer.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        token_latency: Duration,
        /// Message-material limit in bytes (Fxiaoke: 5 MB).
        #[arg(long, default_value_t = 5 * 1024 * 1024)]
        message_max_bytes: u64,
        /// CRM document limit in bytes (Fxiaoke: 20 MB).
        #[arg(long, default_value_t = 20 * 1024 * 1024)]
        document_max_bytes: u64,
        /// Read and count uploads but neither hash nor keep them (a benchmark sink).
        #[arg(long)]
        discard: bool,
        /// With --discard: read each upload's frames and discard them unparsed (benchmarks).
        #[arg(long, requires = "discard")]
        plain: bool,
        /// Lift Fxiaoke's per-interface limit (100 calls per 20 s per path) for benchmarks.
        #[arg(long)]
        no_path_limit: bool,
    },
    /// Read a caller key on stdin and print its key_sha256.
    HashKey,
    /// Probe a running fxgate's admin listener: exit 0 when /healthz (or /readyz) answers 200.
    Healthcheck {
        /// The admin listener (server.admin_listen).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Ask /readyz (a valid corp token is held) instead of /healthz (the process serves).
        #[arg(long)]
        ready: bool,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Healthcheck {
            admin,
            ready,
            timeout,
        } => healthcheck(&admin, ready, timeout),
        Command::HashKey => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut key) {
                eprintln!("fxgate: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                eprintln!("fxgate: no key on stdin");
                return ExitCode::FAILURE;
            }
            println!("{}", hex::encode(config::hash_key(key)));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config: path } => check_config(&config_path(path)),
        Command::Sandbox {
            listen,
            token_ttl,
            app_id,
            app_secret,
            permanent_code,
            token_latency,
            message_max_bytes,
            document_max_bytes,
            discard,
            plain,
            no_path_limit,
        } => {
            fxgate::telemetry::init_logs(
                LogFormat::Pretty,
                &config::LogConfig {
                    format: LogFormat::Pretty,
                    level: None,
                }
                .directive(),
            );
            let opts = SandboxOptions {
                token_ttl,
                app_id,
                app_secret,
                permanent_code,
                token_latency,
                message_max_bytes,
                document_max_bytes,
                discard,
                plain,
                per_path_limit: (!no_path_limit).then_some(100),
                clock: fxgate::clock::SystemClock::shared(),
            };
            let ran = run(async move {
                sandbox::run_standalone(listen, opts)
                    .await
                    .map_err(Into::into)
            });
            ran.map_or_else(|code| code, |()| ExitCode::SUCCESS)
        }
        Command::Serve { config: path } => serve_command(&config_path(path)),
    }
}

fn healthcheck(admin: &str, ready: bool, timeout: Duration) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    match fxgate::healthcheck::probe(admin, path, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fxgate: healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: exit 0 with the effective settings, or 2 naming what is wrong.
fn check_config(path: &std::path::Path) -> ExitCode {
    match check(path) {
        Ok((path, cfg)) => {
            let effective = serde_json::to_string_pretty(&cfg.effective()).unwrap_or_default();
            println!("{effective}");
            eprintln!("fxgate: {}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err((path, e)) => {
            eprintln!("fxgate: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// `serve`, with its exit codes: 0 drained, 1 runtime failure, 2 config, 3 drain cut short.
fn serve_command(path: &std::path::Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fxgate: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match run(serve(cfg)) {
        Ok(Stopped::Drained) => ExitCode::SUCCESS,
        Ok(Stopped::Cut) => ExitCode::from(3),
        Err(code) => code,
    }
}

/// `--config`, else `$FXGATE_CONFIG`, else `config/fxgate.toml`.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("FXGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/fxgate.toml"))
}

/// `check-config`: the config at `path`, and every file `serve` would open (the TLS
/// certificate, key and client CA: read and built as `serve` builds them; secret files are
/// read by the load itself), so a config that passes here does not fail at start.
fn check(path: &std::path::Path) -> Result<(PathBuf, Config), (PathBuf, String)> {
    let failed = |e: String| (path.to_path_buf(), e);
    let cfg = load(path).map_err(|e| failed(e.to_string()))?;
    if let Some(tls) = &cfg.server.tls {
        fxgate::server::Tls::load(tls).map_err(|e| failed(e.to_string()))?;
    }
    if cfg.store.backend == config::Backend::Redis {
        fxgate::store::redis::check(&cfg.store).map_err(|e| failed(e.to_string()))?;
    }
    Ok((path.to_path_buf(), cfg))
}

/// The config at `path`, refused if its dedupe index would not fit this process's memory limit.
fn load(path: &std::path::Path) -> Result<Config, config::ConfigError> {
    let cfg = Config::load(path, None)?;
    fxgate::dedupe::fits::check_index_fits(&cfg, fxgate::dedupe::fits::cgroup_memory_limit())?;
    Ok(cfg)
}

fn run<T>(
    fut: impl std::future::Future<Output = Result<T, fxgate::BoxError>>,
) -> Result<T, ExitCode> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fxgate: cannot start the runtime: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let result = rt.block_on(fut).map_err(|e| {
        eprintln!("fxgate: {e}");
        ExitCode::FAILURE
    });
    // A drain cut short leaves tasks behind: don't wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How `serve` ended.
enum Stopped {
    /// In-flight requests finished (or `shutdown_grace` passed).
    Drained,
    /// A second SIGTERM/SIGINT during the drain: stopped at once.
    Cut,
}

async fn serve(cfg: Config) -> Result<Stopped, fxgate::BoxError> {
    // In the runtime: span exports run on it.
    let telemetry = fxgate::telemetry::init(&cfg.log, &cfg.tracing)?;
    let running = fxgate::app::spawn(cfg).await?;
    tracing::info!(listen = %running.addr, admin = %running.admin_addr, version = env!("CARGO_PKG_VERSION"), "fxgate serving");
    // One machine-readable line on stdout: tests and scripts learn the bound ports from it.
    println!(
        "{}",
        serde_json::json!({"event": "listening", "listen": running.addr.to_string(), "admin": running.admin_addr.to_string()})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let state = running.state.clone();
    // SIGHUP re-reads clients and quotas and the TLS files; a bad file is logged and the old
    // config stays.
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = state.reload_logged("SIGHUP");
            let _ = state.reload_tls("SIGHUP");
        }
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    // A second signal during the drain means "now": the drain is cut short (exit 3).
    let stopped = tokio::select! {
        () = running.shutdown() => Stopped::Drained,
        _ = tokio::signal::ctrl_c() => Stopped::Cut,
        _ = term.recv() => Stopped::Cut,
    };
    if let Stopped::Cut = stopped {
        tracing::warn!("second signal: stopping without waiting for requests in flight");
        return Ok(stopped);
    }
    // Last: the spans of the drained requests go out too.
    telemetry.shutdown().await;
    Ok(stopped)
}
