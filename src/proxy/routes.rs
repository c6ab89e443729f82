//! The route table: longest path prefix wins, matched on segment boundaries of the
//! normalized path (`/api` matches `/api` and `/api/x`, never `/apix`).

use std::sync::Arc;

use super::upstream::Cluster;

pub struct Route {
    pub prefix: String,
    pub public: bool,
    pub cluster: Arc<Cluster>,
}

pub struct RouteTable {
    // Longest prefix first, so the first match is the most specific.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| prefix_matches(&r.prefix, path))
    }
}

/// Pure rule: does `prefix` cover `path` on a segment boundary?
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }
}
