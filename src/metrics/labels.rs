//! The label values fxgate's families take from a fixed set: one enum per label, so a series
//! can never be created with a value outside it, and every value can be zero-initialised.

/// `fxgate_reloads_total{what}`: what was reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The callers and their quotas, from the config file.
    Config,
    /// The TLS certificate, key and client CA.
    Tls,
}

impl Reloaded {
    pub(super) const ALL: [Self; 2] = [Self::Config, Self::Tls];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Tls => "tls",
        }
    }
}

/// `fxgate_dedupe_total{result}`: how an upload met the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeResult {
    /// A claimed digest was found before the body was read.
    HitClaim,
    /// The whole file came and was found.
    HitStream,
    /// The file was new.
    Miss,
}

impl DedupeResult {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 3] = [Self::HitClaim, Self::HitStream, Self::Miss];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HitClaim => "hit_claim",
            Self::HitStream => "hit_stream",
            Self::Miss => "miss",
        }
    }
}

/// `fxgate_token_refresh_total{result}`: what a turn at the token gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// A new token.
    Ok,
    /// Fxiaoke handed back the token already held (its same-token window).
    SameToken,
    /// The call failed.
    Error,
    /// Another replica's token was taken over from the shared store.
    Shared,
}

impl RefreshResult {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 4] = [Self::Ok, Self::SameToken, Self::Error, Self::Shared];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::SameToken => "same_token",
            Self::Error => "error",
            Self::Shared => "shared",
        }
    }
}

/// `fxgate_quota_rejected_total{kind}`: which caller limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `requests_per_minute`.
    RequestsPerMinute,
    /// `max_concurrent_uploads`.
    MaxConcurrentUploads,
    /// `bytes_per_day`.
    BytesPerDay,
    /// The route allow-list.
    Route,
    /// The shared store is down and quotas fail closed.
    StoreUnavailable,
}

impl QuotaKind {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 5] = [
        Self::RequestsPerMinute,
        Self::MaxConcurrentUploads,
        Self::BytesPerDay,
        Self::Route,
        Self::StoreUnavailable,
    ];

    /// The label value (also the `kind` of a 942901).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::MaxConcurrentUploads => "max_concurrent_uploads",
            Self::BytesPerDay => "bytes_per_day",
            Self::Route => "route",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

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
}
