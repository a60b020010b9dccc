//! What kind of failure a store command met, as `fxgate_store_errors_total{kind}` names it,
//! and which kinds mean Redis is refusing fxgate although connected.

/// What kind of failure a store command met (`fxgate_store_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection failed or was down (nothing was asked).
    Io,
    /// No answer within `store.timeout`.
    Timeout,
    /// `OOM`: Redis at `maxmemory` under `noeviction`.
    Oom,
    /// `READONLY`: a replica (a failover in progress, or the wrong address).
    Readonly,
    /// `NOPERM` / failed authentication: the ACL user may not do this.
    Noperm,
    /// `NOSCRIPT`: a script not loaded (redis-rs loads and retries it by itself).
    Noscript,
    /// `CROSSSLOT`: keys of one command in different Cluster slots.
    Crossslot,
    /// Anything else Redis answered with.
    Other,
}

impl FailureKind {
    /// Every kind, for zero-initialised series.
    pub const ALL: [Self; 8] = [
        Self::Io,
        Self::Timeout,
        Self::Oom,
        Self::Readonly,
        Self::Noperm,
        Self::Noscript,
        Self::Crossslot,
        Self::Other,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::Readonly => "readonly",
            Self::Noperm => "noperm",
            Self::Noscript => "noscript",
            Self::Crossslot => "crossslot",
            Self::Other => "other",
        }
    }

    pub(super) fn of(e: &redis::RedisError) -> Self {
        if e.is_timeout() {
            return Self::Timeout;
        }
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return Self::Noperm;
        }
        match e.code() {
            Some("OOM") => Self::Oom,
            Some("READONLY") => Self::Readonly,
            Some("NOPERM" | "NOAUTH" | "WRONGPASS") => Self::Noperm,
            Some("NOSCRIPT") => Self::Noscript,
            Some("CROSSSLOT") => Self::Crossslot,
            _ if e.is_io_error() || e.is_connection_dropped() => Self::Io,
            _ => Self::Other,
        }
    }

    /// Redis answered, and refuses what fxgate needs of it: the store is failing although
    /// connected.
    pub(super) const fn refuses(self) -> bool {
        matches!(
            self,
            Self::Oom | Self::Readonly | Self::Noperm | Self::Crossslot
        )
    }
}
