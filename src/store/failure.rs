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
    match e.code() {
        Some("OOM") => FailureKind::Oom,
        Some("READONLY") => FailureKind::Readonly,
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => FailureKind::Noperm,
        Some("NOSCRIPT") => FailureKind::Noscript,
        Some("CROSSSLOT") => FailureKind::Crossslot,
        _ if e.is_io_error() || e.is_connection_dropped() => FailureKind::Io,
        _ => FailureKind::Other,
    }
}

/// Redis answered, and refuses what fxgate needs of it: the store is failing although
/// connected.
pub(super) const fn refuses(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::Oom | FailureKind::Readonly | FailureKind::Noperm | FailureKind::Crossslot
    )
}
