//! Which kind of failure a store command met (`metrics::FailureKind`, the label of
//! `fxgate_store_errors_total{kind}`), and which kinds mean Redis is refusing fxgate although
//! connected.

use crate::metrics::FailureKind;

/// The kind of `e`.
pub(super) fn kind_of(e: &redis::RedisError) -> FailureKind {
    if e.is_timeout() {
        return FailureKind::Timeout;
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return FailureKind::Noperm;
    }
    match server_code(e).as_deref().or(e.code()) {
        Some("OOM") => FailureKind::Oom,
        Some("READONLY") => FailureKind::Readonly,
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => FailureKind::Noperm,
        Some("NOSCRIPT") => FailureKind::Noscript,
        Some("CROSSSLOT") => FailureKind::Crossslot,
        _ if e.is_io_error() || e.is_connection_dropped() => FailureKind::Io,
        _ => FailureKind::Other,
    }
}

/// The code of the first command Redis refused inside a pipeline or a transaction: redis-rs
/// reports those as one error of their own (a full Redis refusing a command of a `MULTI` at
/// once arrives as `EXECABORT`), which would otherwise count as `other`.
fn server_code(e: &redis::RedisError) -> Option<String> {
    let errors = e.clone().into_server_errors()?;
    errors
        .iter()
        .map(|(_, err)| err.code())
        .find(|code| *code != "EXECABORT")
        .map(str::to_string)
}

/// Redis answered, and refuses what fxgate needs of it: the store is failing although
/// connected.
pub(super) const fn refuses(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::Oom | FailureKind::Readonly | FailureKind::Noperm | FailureKind::Crossslot
    )
}
