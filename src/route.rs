//! The route vocabulary: every caller-facing route fxgate serves, named once. Routing, the
//! callers' allow-lists (`routes = [...]`), the quota layer (which routes are uploads), metric
//! labels and the access log all speak `Route`; nothing else spells a path. A request's route
//! is resolved once, by the access-log layer (the outermost layer that needs it), and put into
//! the request extensions as `RouteMatch`, so every layer below reads the same answer.

use std::fmt;
use std::time::Duration;

/// Largest body of the small JSON routes (download, delete, the token endpoints), whoever
/// reads it: the auth layer looking for a credential, or the handler.
pub const JSON_BODY_MAX: usize = 64 * 1024;

/// A caller-facing route (design §3). The label and the upstream path are the same string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /media/upload/message`: message material.
    UploadMessage,
    /// `POST /media/upload?type=image|document`: CRM material.
    Upload,
    /// `POST /media/upload/file`: up to 100 MB through Fxiaoke's File Service, answered with
    /// an npath (design §10).
    UploadFile,
    /// `POST /media/download`: a file streams back.
    Download,
    /// `POST /media/delete`: also evicts the dedupe index.
    Delete,
    /// `POST /cgi/corpAccessToken/get/V2` or `/oauth2.0/token`: answered by fxgate itself
    /// with a caller-bound `fxg_` token (SDK drop-in, design §9).
    Token(ApiStyle),
    /// Any other `POST /cgi/*`: passed through to Fxiaoke with the corp's token.
    Passthrough,
}

impl Route {
    /// Every route with a path of its own, in docs/api.md's order.
    pub const ALL: [Route; 7] = [
        Route::UploadMessage,
        Route::Upload,
        Route::UploadFile,
        Route::Download,
        Route::Delete,
        Route::Token(ApiStyle::Legacy),
        Route::Token(ApiStyle::OAuth),
    ];

    /// The route serving `path`, if fxgate serves it.
    pub fn of(path: &str) -> Option<Route> {
        Self::ALL
            .into_iter()
            .find(|r| r.path() == path)
            .or_else(|| path.starts_with("/cgi/").then_some(Route::Passthrough))
    }

    /// Its path, at fxgate and at Fxiaoke alike (`/cgi/*` for the passthrough, whose upstream
    /// path is the request's own).
    pub const fn path(self) -> &'static str {
        match self {
            Self::UploadMessage => "/media/upload/message",
            Self::Upload => "/media/upload",
            Self::UploadFile => "/media/upload/file",
            Self::Download => "/media/download",
            Self::Delete => "/media/delete",
            Self::Token(style) => style.token_path(),
            Self::Passthrough => "/cgi/*",
        }
    }

    /// Its metric label value (the path: dashboards and alerts already use it). A
    /// passthrough call's label is its path's (`path_label`).
    pub const fn label(self) -> &'static str {
        self.path()
    }

    /// Whether the body is a file (concurrency and byte quotas apply).
    pub const fn is_upload(self) -> bool {
        matches!(self, Self::UploadMessage | Self::Upload | Self::UploadFile)
    }

    /// The most a JSON body to this route may hold, read whole: `passthrough_max` (the
    /// `[passthrough] max_body` in force) for the passthrough, `JSON_BODY_MAX` for the other
    /// JSON routes. `None` for an upload: its limit is the file's (`UploadConfig::file_limit`),
    /// and its body streams.
    pub const fn body_limit(self, passthrough_max: u64) -> Option<u64> {
        match self {
            Self::Token(_) | Self::Download | Self::Delete => Some(JSON_BODY_MAX as u64),
            Self::Passthrough => Some(passthrough_max),
            Self::UploadMessage | Self::Upload | Self::UploadFile => None,
        }
    }

    /// The longest pause between two chunks of a caller's body, once the caller is known
    /// (before, `server.unauthenticated_body_timeout` applies).
    pub const fn body_idle(self) -> Duration {
        BODY_IDLE_TIMEOUT
    }
}

/// Longest pause fxgate tolerates between two body chunks from a known caller.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Fxiaoke's two ways of carrying a token (fxiaoke.md §1a, §1b, §4): a caller's style
/// (`api_style`), and the token flow a corp keeps one token for, each fetched from its own
/// endpoint by its own refresher (the `flow` metric label).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyle {
    /// `/cgi/corpAccessToken/get/V2`: `corpAccessToken` + `corpId` in the body or the query.
    #[default]
    Legacy,
    /// `/oauth2.0/token` (`grantType: app_secret`): `authorization: Bearer`, `x-fs-ea`.
    #[serde(rename = "oauth")]
    OAuth,
}

impl ApiStyle {
    /// Both styles.
    pub const ALL: [ApiStyle; 2] = [ApiStyle::Legacy, ApiStyle::OAuth];

    /// Its name in config (`api_style`) and the `flow` metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::OAuth => "oauth",
        }
    }

    /// The path of its token endpoint.
    pub const fn token_path(self) -> &'static str {
        match self {
            Self::Legacy => "/cgi/corpAccessToken/get/V2",
            Self::OAuth => "/oauth2.0/token",
        }
    }

    /// The answer's fields holding the token and the account it belongs to.
    pub const fn fields(self) -> (&'static str, &'static str) {
        match self {
            Self::Legacy => ("corpAccessToken", "corpId"),
            Self::OAuth => ("accessToken", "ea"),
        }
    }
}

impl std::fmt::Display for ApiStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Longest request path fxgate accepts (Fxiaoke's longest interface is under 60 bytes).
pub const MAX_PATH: usize = 512;
/// Longest path segment fxgate accepts.
pub const MAX_SEGMENT: usize = 128;

/// Why a path is not the one spelling fxgate accepts (design §9, Boundaries); safe to show.
pub fn canonical(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH {
        return Err("the path is longer than 512 bytes");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with `/`");
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("the path has an empty segment (`//` or a trailing `/`)");
        }
        if segment == "." || segment == ".." {
            return Err("the path has a `.` or `..` segment");
        }
        if segment.len() > MAX_SEGMENT {
            return Err("a path segment is longer than 128 bytes");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err("path segments may hold only A-Z a-z 0-9 . _ ~ - (no percent-encoding, `;`, `\\` or control bytes)");
        }
    }
    // Servers Fxiaoke may run match paths loosely (case, Spring's `.json` suffixes): any
    // other spelling of a token endpoint would reach Fxiaoke's real one.
    for style in ApiStyle::ALL {
        let exact = style.token_path();
        let looks_like = path.len() >= exact.len()
            && path.as_bytes()[..exact.len()].eq_ignore_ascii_case(exact.as_bytes());
        if looks_like && path != exact {
            return Err("another spelling of a token endpoint; only its exact path is served");
        }
    }
    Ok(())
}

/// The route a request was matched to, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch {
    /// `None`: fxgate serves no such path (or it is not canonical).
    pub route: Option<Route>,
    /// The metric label (bounded: see `path_label`).
    pub label: &'static str,
    /// Why the path is refused before anything else decides (`canonical`).
    pub refused: Option<&'static str>,
}

impl RouteMatch {
    /// Resolves `path`; a path that is not canonical matches no route.
    pub fn of(path: &str) -> Self {
        if let Err(why) = canonical(path) {
            return Self {
                route: None,
                label: "other",
                refused: Some(why),
            };
        }
        let route = Route::of(path);
        let label = match route {
            None => "other",
            Some(Route::Passthrough) => path_label(path),
            Some(r) => r.label(),
        };
        Self {
            route,
            label,
            refused: None,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.label
    }
}

/// Fxiaoke interfaces that get a label of their own without being configured (fxiaoke.md;
/// the ones services call most). Every other `/cgi/` path is `other` unless a caller's
/// `routes` names it exactly.
pub const KNOWN_PATHS: &[&str] = &[
    "/cgi/message/send",
    "/cgi/crm/v2/data/query",
    "/cgi/crm/v2/data/get",
    "/cgi/crm/v2/data/create",
    "/cgi/crm/v2/data/update",
    "/cgi/crm/v2/data/invalid",
    "/cgi/crm/v2/data/delete",
    "/cgi/crm/v2/object/list",
    "/cgi/crm/v2/object/describe",
    "/cgi/crm/v2/generatorFileUploadCredential",
    "/cgi/crm/v2/generateDownloadSignatureUrlByAuth",
    "/cgi/user/get",
    "/cgi/user/list",
    "/cgi/department/list",
];

/// Exact paths named in callers' `routes`, interned for labels. Leaked on purpose: label
/// values must be `'static` for the hot path, and the set only grows by paths an operator
/// writes into config (a reload that repeats them adds nothing).
static CONFIGURED: std::sync::LazyLock<
    parking_lot::RwLock<std::collections::HashSet<&'static str>>,
> = std::sync::LazyLock::new(Default::default);

/// Makes these configured exact paths labels of their own.
pub fn register_labels<'a>(paths: impl IntoIterator<Item = &'a str>) {
    let mut set = CONFIGURED.write();
    for p in paths {
        if p.starts_with("/cgi/") && !set.contains(p) && !KNOWN_PATHS.contains(&p) {
            set.insert(Box::leak(p.to_string().into_boxed_str()));
        }
    }
}

/// The metric label of a passthrough path: itself when known or configured, else `other`.
pub fn path_label(path: &str) -> &'static str {
    if let Some(known) = KNOWN_PATHS.iter().find(|k| **k == path) {
        return known;
    }
    CONFIGURED.read().get(path).copied().unwrap_or("other")
}

/// One entry of a caller's `routes`: an exact path, or a prefix ending in `*` (design §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    /// This path only.
    Exact(String),
    /// Every path starting with this (the `*` removed).
    Prefix(String),
}

impl RoutePattern {
    /// Parses `/cgi/message/send` or `/cgi/crm/v2/data/*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if !s.starts_with('/') {
            return Err(format!("`{s}` must start with `/`"));
        }
        let pattern = match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Self::Prefix(prefix.to_string()),
            None if !s.contains('*') => Self::Exact(s.to_string()),
            _ => return Err(format!("`{s}`: `*` may only end a pattern")),
        };
        // Requests are held to one spelling, so a pattern in any other could never match.
        let sample = match &pattern {
            Self::Exact(p) => p.clone(),
            Self::Prefix(p) => format!("{p}x"),
        };
        canonical(&sample).map_err(|why| format!("`{s}`: {why}"))?;
        Ok(pattern)
    }

    /// Whether `path` is allowed by this pattern.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => path.starts_with(p.as_str()),
        }
    }

    /// As written in config.
    pub fn to_config(&self) -> String {
        match self {
            Self::Exact(p) => p.clone(),
            Self::Prefix(p) => format!("{p}*"),
        }
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_by_its_own_path_and_nothing_else_is() {
        for r in Route::ALL {
            assert_eq!(Route::of(r.path()), Some(r));
        }
        assert_eq!(Route::of("/media/upload/"), None);
        assert_eq!(Route::of("/cgi/anything"), Some(Route::Passthrough));
        assert_eq!(RouteMatch::of("/nope").label(), "other");
        assert!(Route::Upload.is_upload() && !Route::Delete.is_upload());
    }

    #[test]
    fn passthrough_labels_are_bounded_to_known_and_configured_paths() {
        assert_eq!(
            RouteMatch::of("/cgi/message/send").label(),
            "/cgi/message/send"
        );
        assert_eq!(RouteMatch::of("/cgi/custom/thing/1").label(), "other");
        register_labels(["/cgi/custom/thing/2"]);
        assert_eq!(
            RouteMatch::of("/cgi/custom/thing/2").label(),
            "/cgi/custom/thing/2"
        );
        assert_eq!(
            RouteMatch::of("/oauth2.0/token").route,
            Some(Route::Token(ApiStyle::OAuth))
        );
    }

    #[test]
    fn one_spelling_per_path() {
        for ok in [
            "/cgi/crm/v2/data/query",
            "/media/upload",
            "/cgi/a.b_c~d-e",
            "/oauth2.0/token",
        ] {
            assert_eq!(canonical(ok), Ok(()), "{ok}");
        }
        let long_segment = format!("/cgi/{}", "a".repeat(MAX_SEGMENT + 1));
        let long_path = "/cgi/aaaaaaaa".repeat(60);
        for bad in [
            "/cgi/../oauth2.0/token",
            "/cgi/./x",
            "/cgi//x",
            "/cgi/x/",
            "/",
            "/cgi/%2e%2e/x",
            "/cgi/x;y",
            "/cgi/x\\y",
            "/cgi/corpAccessToken/get/V2/",
            "/cgi/corpaccesstoken/get/v2",
            "/cgi/corpAccessToken/get/V2.json",
            "/OAUTH2.0/token",
            "cgi/x",
            long_segment.as_str(),
            long_path.as_str(),
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
            assert_eq!(RouteMatch::of(bad).route, None, "{bad}");
        }
    }

    #[test]
    fn patterns_are_exact_or_prefixes() {
        let p = RoutePattern::parse("/cgi/crm/v2/data/*").unwrap();
        assert!(p.matches("/cgi/crm/v2/data/query") && !p.matches("/cgi/crm/v2/other"));
        let e = RoutePattern::parse("/cgi/message/send").unwrap();
        assert!(e.matches("/cgi/message/send") && !e.matches("/cgi/message/send/x"));
        assert!(RoutePattern::parse("cgi/x").is_err());
        assert!(RoutePattern::parse("/cgi/*/send").is_err());
        assert!(RoutePattern::parse("/cgi/crm/../*").is_err());
        assert!(RoutePattern::parse("/cgi/x/").is_err());
        assert_eq!(p.to_config(), "/cgi/crm/v2/data/*");
    }

    #[test]
    fn query_params_are_decoded() {
        let uri: http::Uri = "/x?a=1&filename=%E5%9B%BE.png&a=2".parse().unwrap();
        assert_eq!(query_param(&uri, "filename").as_deref(), Some("图.png"));
        assert_eq!(query_param(&uri, "a").as_deref(), Some("1"));
        assert_eq!(query_param(&uri, "b"), None);
    }
}
