//! `fxgate healthcheck`: the container health probe for images without a shell or curl.
//!
//! Blocking std I/O on purpose: the probe runs once per interval in its own short-lived
//! process, so a runtime would only add start-up time. One deadline covers connecting, writing
//! and reading, so a wedged or trickling listener makes the probe fail instead of hang.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Asks `GET path` of the admin listener at `addr` and succeeds only on a 200.
pub fn probe(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut conn =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{target}: {e}"))?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| format!("{target}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("{target}: {e}"))?;
    // The status line is all that is needed; 512 bytes hold it whatever the headers.
    let mut head = [0u8; 512];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(2).any(|w| w == b"\r\n") {
        // What is left of the one deadline, however many reads a trickling answer takes.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{target}{path}: no answer within {timeout:?}"));
        }
        conn.set_read_timeout(Some(left))
            .map_err(|e| format!("{target}: {e}"))?;
        match conn.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("{target}{path}: {e}")),
        }
    }
    let status = std::str::from_utf8(&head[..len])
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .unwrap_or("no HTTP answer");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{target}{path}: {status}"))
    }
}
