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
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Polls `paths` every `interval` until `shutdown`, calling `on_change` after each change of
/// their content. The content when this returns is the baseline: nothing fires for it.
pub async fn spawn(
    name: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
    mut on_change: impl FnMut() + Send + 'static,
) {
    let paths = Arc::new(paths);
    let Some(mut seen) = fingerprint_off_runtime(&paths).await else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(now) = fingerprint_off_runtime(&paths).await else {
                return;
            };
            if now != seen {
                seen = now;
                tracing::info!(watch = name, "watched files changed; reloading");
                on_change();
            }
        }
    });
}

/// `fingerprint` on the blocking pool: file reads never hold an async worker. `None` only if
/// the runtime is shutting down.
async fn fingerprint_off_runtime(paths: &Arc<Vec<PathBuf>>) -> Option<[u8; 32]> {
    let paths = paths.clone();
    tokio::task::spawn_blocking(move || fingerprint(&paths))
        .await
        .ok()
}

/// What the files hold now, hashed as they are read (memory stays flat whatever their size).
/// Only regular files (symlinks followed) are opened: a FIFO or a device put where a file was
/// expected would block the read, and counts as "not a file" instead.
fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        let read = match std::fs::metadata(p) {
            Ok(m) if !m.is_file() => Err(std::io::Error::other("not a regular file")),
            Ok(_) => std::fs::File::open(p).and_then(|mut f| std::io::copy(&mut f, &mut h)),
            Err(e) => Err(e),
        };
        match read {
            Ok(len) => {
                h.update([1]);
                h.update(len.to_le_bytes());
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
        )
        .await;
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

    /// A FIFO where a watched file should be would block a read for ever; it is not opened,
    /// and the watcher goes on seeing the other files change.
    #[tokio::test]
    async fn a_fifo_among_the_paths_does_not_stall_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let (file, fifo) = (dir.path().join("a.pem"), dir.path().join("fifo"));
        std::fs::write(&file, "one").unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        spawn(
            "test",
            vec![fifo, file.clone()],
            Duration::from_millis(20),
            stop.clone(),
            move || {
                let _ = tx.send(());
            },
        )
        .await;
        std::fs::write(&file, "two").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the change was seen")
            .unwrap();
        stop.cancel();
    }
}
