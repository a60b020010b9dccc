//! The route vocabulary: every caller-facing route fxgate serves, named once. Routing, the
//! callers' allow-lists (`routes = [...]`), the quota layer (which routes are uploads), metric
//! labels and the access log all speak `Route`; nothing else spells a path. A request's route
//! is resolved once, by the access-log layer (the outermost layer that needs it), and put into
//! the request extensions as `RouteMatch`, so every layer below reads the same answer.

use std::fmt;

/// A caller-facing route (design §3). The label and the upstream path are the same string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /media/upload/message`: message material.
    UploadMessage,
    /// `POST /media/upload?type=image|document`: CRM material.
    Upload,
    /// `POST /media/download`: a file streams back.
    Download,
    /// `POST /media/delete`: also evicts the dedupe index.
    Delete,
}

impl Route {
    /// Every route, in the README's order.
    pub const ALL: [Route; 4] = [
        Route::UploadMessage,
        Route::Upload,
        Route::Download,
        Route::Delete,
    ];

    /// The route serving `path`, if fxgate serves it.
    pub fn of(path: &str) -> Option<Route> {
        Self::ALL.into_iter().find(|r| r.path() == path)
    }

    /// Its path, at fxgate and at Fxiaoke alike.
    pub const fn path(self) -> &'static str {
        match self {
            Self::UploadMessage => "/media/upload/message",
            Self::Upload => "/media/upload",
            Self::Download => "/media/download",
            Self::Delete => "/media/delete",
        }
    }

    /// Its metric label value (the path: dashboards and alerts already use it).
    pub const fn label(self) -> &'static str {
        self.path()
    }

    /// Whether the body is a file (concurrency and byte quotas apply).
    pub const fn is_upload(self) -> bool {
        matches!(self, Self::UploadMessage | Self::Upload)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// The route a request was matched to, in its extensions (`None`: fxgate serves no such path).
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch(pub Option<Route>);

impl RouteMatch {
    /// The metric label: the route's, or `other` (keeps label values bounded).
    pub fn label(self) -> &'static str {
        self.0.map_or("other", Route::label)
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
        assert_eq!(RouteMatch(None).label(), "other");
        assert!(Route::Upload.is_upload() && !Route::Delete.is_upload());
    }

    #[test]
    fn query_params_are_decoded() {
        let uri: http::Uri = "/x?a=1&filename=%E5%9B%BE.png&a=2".parse().unwrap();
        assert_eq!(query_param(&uri, "filename").as_deref(), Some("图.png"));
        assert_eq!(query_param(&uri, "a").as_deref(), Some("1"));
        assert_eq!(query_param(&uri, "b"), None);
    }
}
