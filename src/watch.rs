//! Files fxgate re-reads when they change: its config file (a ConfigMap update reaches every
//! pod without anyone sending SIGHUP) and the TLS certificate, key and client CA.
//!
//! Polled, not inotify: Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink
//! (`..data`) two directories away, which a watch on the file itself never sees, and editors
//! and `mv` replace files rather than write them. Reading a few KiB each interval costs
//! nothing measurable. A change is a change of content (SHA-256 over every file, or over why it
//! could not be read), so a touch or a rewrite of the same bytes does nothing, and a set of
//! files that failed to apply is tried again only once something in it changes again (a
//! certificate written a moment before its key).

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Polls `paths` every `interval` until `shutdown`, calling `on_change` after each change of
/// their content. The content at the time of the call is the baseline: nothing fires for it.
pub fn spawn(
    name: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
    mut on_change: impl FnMut() + Send + 'static,
) {
    let mut seen = fingerprint(&paths);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&paths);
            if now != seen {
                seen = now;
                tracing::info!(watch = name, "watched files changed; reloading");
                on_change();
            }
        }
    });
}

/// What the files hold now (small files: configs and PEM). Blocking reads, as the config load
/// and the TLS build that follow a change are.
fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        match std::fs::read(p) {
            Ok(bytes) => {
                h.update([1]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update([0]);
                h.update(e.kind().to_string());
            }
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_once_per_change_of_content_not_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pem");
        std::fs::write(&file, "one").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        spawn(
            "test",
            vec![file.clone(), dir.path().join("missing")],
            Duration::from_secs(1),
            stop.clone(),
            move || {
                let _ = tx.send(());
            },
        );
        // The same bytes rewritten: nothing.
        std::fs::write(&file, "one").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(rx.try_recv().is_err());
        std::fs::write(&file, "two").unwrap();
        rx.recv().await.unwrap();
        // A file that appears is a change too.
        std::fs::write(dir.path().join("missing"), "x").unwrap();
        rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(rx.try_recv().is_err());
        stop.cancel();
    }
}
