//! Outbound HTTP for plugins: the origin patterns a plugin declares and a pod
//! grants, and the check `wasi:http` makes on every request.
//!
//! A pattern names an origin: `scheme://host[:port]`. The host may be a
//! name, an IPv4 address, a bracketed IPv6 address, `*.example.com` (any
//! name below `example.com`, not `example.com` itself) or `*` (any host). The
//! port may be a number or `*`; without one it is the scheme's default (80 or
//! 443). A request goes out only if its scheme, host and port match one of
//! the plugin's declared patterns *and* one of the pod's granted patterns.
//!
//! The host never follows redirects for a plugin: a plugin that follows one
//! sends a new request, which is checked like any other.
//!
//! Raw sockets (`wasi:sockets`) are refused unless the plugin declares and the
//! pod grants socket addresses: `IP:port` or `IP:*` (`[v6]:port`). Then TCP
//! connections and UDP datagrams to a matching address go through; binding
//! is allowed only to an ephemeral port, listening never, and name lookup
//! stays off (a plugin that needs names uses `wasi:http`).

use std::sync::Arc;

use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

/// The scheme of a pattern or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.suffix`: names ending in `.suffix`.
    Below(String),
    Exact(String),
}

/// One origin pattern, such as `https://*.example.com` or `http://127.0.0.1:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    text: String,
    scheme: Scheme,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Lower-cases a host name and drops one trailing dot, so that `Example.COM.`
/// and `example.com` are the same host.
fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn parse_scheme(text: &str) -> Option<Scheme> {
    match text.to_ascii_lowercase().as_str() {
        "http" => Some(Scheme::Http),
        "https" => Some(Scheme::Https),
        _ => None,
    }
}

impl OriginPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let bad = |why: &str| format!("{text:?} is not an origin pattern ({why}); write scheme://host[:port]");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = parse_scheme(scheme).ok_or_else(|| bad("the scheme must be http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("an origin has no path, query, fragment or user"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            addr.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address in [...]"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("bad port"))?),
        };
        let host = normalize_host(&host);
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_name(suffix) {
                return Err(bad("bad name after *."));
            }
            HostPattern::Below(suffix.to_string())
        } else if host.starts_with('[') || valid_name(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(bad("bad host"));
        };
        Ok(OriginPattern { text: text.to_string(), scheme, host, port })
    }

    fn matches(&self, origin: &Origin) -> bool {
        let host = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => *h == origin.host,
            HostPattern::Below(suffix) => {
                origin.host.strip_suffix(suffix.as_str()).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
        };
        self.scheme == origin.scheme && host && self.port.is_none_or(|p| p == origin.port)
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl Origin {
    fn of(uri: &http::Uri) -> Option<Origin> {
        let scheme = parse_scheme(uri.scheme_str()?)?;
        let authority = uri.authority()?;
        let host = normalize_host(authority.host());
        if host.is_empty() {
            return None;
        }
        Some(Origin { scheme, host, port: authority.port_u16().unwrap_or(scheme.default_port()) })
    }
}

/// Parses a list of patterns, naming the first bad one.
pub fn parse_patterns(patterns: &[String]) -> Result<Vec<OriginPattern>, String> {
    patterns.iter().map(|p| OriginPattern::parse(p)).collect()
}

/// The origins one plugin may reach in one pod: declared ∩ granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpAccess {
    declared: Vec<OriginPattern>,
    granted: Vec<OriginPattern>,
}

impl HttpAccess {
    /// Access to what matches a pattern of both lists.
    pub fn new(declared: Vec<OriginPattern>, granted: Vec<OriginPattern>) -> HttpAccess {
        HttpAccess { declared, granted }
    }

    /// Whether nothing at all may be reached.
    pub fn is_none(&self) -> bool {
        self.declared.is_empty() || self.granted.is_empty()
    }

    /// Whether a request to `uri` may go out; the error says why not.
    pub fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let Some(origin) = Origin::of(uri) else {
            return Err(format!("{uri}: only absolute http and https URLs can be requested"));
        };
        let list = |patterns: &[OriginPattern]| {
            if patterns.is_empty() {
                "nothing".to_string()
            } else {
                patterns.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        if !self.declared.iter().any(|p| p.matches(&origin)) {
            return Err(format!(
                "{uri}: the plugin's capability file declares http access to {}",
                list(&self.declared)
            ));
        }
        if !self.granted.iter().any(|p| p.matches(&origin)) {
            return Err(format!("{uri}: the pod grants this plugin http access to {}", list(&self.granted)));
        }
        Ok(())
    }
}

/// One socket address pattern: an IP address and a port or any port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrPattern {
    ip: std::net::IpAddr,
    port: Option<u16>,
}

impl AddrPattern {
    /// Parses `IP:port`, `IP:*`, `[v6]:port` or `[v6]:*`.
    pub fn parse(text: &str) -> Result<AddrPattern, String> {
        let bad = || format!("{text:?} is not a socket address pattern; write IP:port, IP:* or [IPv6]:port");
        let (ip, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')).unwrap_or(ip);
        let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?),
        };
        Ok(AddrPattern { ip, port })
    }

    fn matches(&self, addr: std::net::SocketAddr) -> bool {
        self.ip == addr.ip() && self.port.is_none_or(|p| p == addr.port())
    }
}

/// Parses a list of socket address patterns, naming the first bad one.
pub fn parse_addr_patterns(patterns: &[String]) -> Result<Vec<AddrPattern>, String> {
    patterns.iter().map(|p| AddrPattern::parse(p)).collect()
}

/// The socket addresses one plugin may reach in one pod: declared ∩ granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    declared: Vec<AddrPattern>,
    granted: Vec<AddrPattern>,
}

impl SocketAccess {
    /// Access to what matches a pattern of both lists.
    pub fn new(declared: Vec<AddrPattern>, granted: Vec<AddrPattern>) -> SocketAccess {
        SocketAccess { declared, granted }
    }

    /// Whether no address at all may be reached.
    pub fn is_none(&self) -> bool {
        self.declared.is_empty() || self.granted.is_empty()
    }

    /// Whether the socket operation `usage` on `addr` may go ahead.
    pub fn allows(&self, addr: std::net::SocketAddr, usage: wasmtime_wasi::sockets::SocketAddrUse) -> bool {
        use wasmtime_wasi::sockets::SocketAddrUse as Use;
        match usage {
            Use::TcpConnect | Use::UdpSend | Use::UdpReceive => {
                self.declared.iter().any(|p| p.matches(addr)) && self.granted.iter().any(|p| p.matches(addr))
            }
            // The implicit bind before a connection or a datagram.
            Use::TcpBind | Use::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
            Use::TcpListen | Use::TcpAccept => false,
        }
    }
}

/// The `wasi:http` hooks of one call: every request is checked against the
/// plugin's [`HttpAccess`] before a connection is made. A refused request
/// fails inside the plugin with `http-request-denied`, and the host log says
/// which URL and why.
pub struct HttpPolicy {
    /// The plugin, for the log.
    pub plugin: Arc<str>,
    /// The pod, for the log.
    pub pod: String,
    /// What it may reach.
    pub access: HttpAccess,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        if let Err(why) = self.access.check(request.uri()) {
            tracing::warn!(plugin = &*self.plugin, pod = %self.pod, "http request refused: {why}");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = &*self.plugin, pod = %self.pod, method = %request.method(), uri = %request.uri(), "http request");
        let default: &mut dyn WasiHttpHooks = &mut DefaultHooks;
        default.send_request(request, options, fut)
    }
}

/// The crate's own behaviour, which [`HttpPolicy`] forwards to once a request
/// passed the check.
struct DefaultHooks;

impl WasiHttpHooks for DefaultHooks {}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(declared: &[&str], granted: &[&str]) -> HttpAccess {
        let parse = |list: &[&str]| parse_patterns(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        HttpAccess::new(parse(declared), parse(granted))
    }

    fn allowed(access: &HttpAccess, url: &str) -> bool {
        access.check(&url.parse().unwrap()).is_ok()
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let a = access(&["https://api.example.com"], &[]);
        assert!(a.is_none());
        let all = ["https://api.example.com", "http://127.0.0.1:*", "https://*.cdn.net"];
        let a = access(&all, &all);
        assert!(allowed(&a, "https://api.example.com/v1?q=1"));
        assert!(allowed(&a, "https://API.Example.com.:443/"));
        assert!(!allowed(&a, "http://api.example.com/"), "scheme");
        assert!(!allowed(&a, "https://api.example.com:8443/"), "port");
        assert!(!allowed(&a, "https://evil-api.example.com/"));
        assert!(!allowed(&a, "https://api.example.com.evil.org/"));
        assert!(allowed(&a, "http://127.0.0.1:5000/x"));
        assert!(allowed(&a, "http://127.0.0.1/x"));
        assert!(!allowed(&a, "http://127.0.0.2:5000/x"));
        assert!(!allowed(&a, "http://localhost:5000/x"));
        assert!(allowed(&a, "https://a.b.cdn.net/"));
        assert!(!allowed(&a, "https://cdn.net/"), "*. needs a label in front");
        assert!(!allowed(&a, "https://xcdn.net/"));
        assert!(!allowed(&a, "/relative/path"));
    }

    #[test]
    fn access_is_the_intersection() {
        let a = access(&["http://127.0.0.1:*"], &["http://127.0.0.1:8080", "https://example.com"]);
        assert!(allowed(&a, "http://127.0.0.1:8080/"));
        let err = a.check(&"http://127.0.0.1:9090/".parse().unwrap()).unwrap_err();
        assert!(err.contains("grants") && err.contains("http://127.0.0.1:8080"), "{err}");
        let err = a.check(&"https://example.com/".parse().unwrap()).unwrap_err();
        assert!(err.contains("declares"), "{err}");
    }

    #[test]
    fn ipv6_and_any_host() {
        let a = access(&["http://[::1]:*", "https://*"], &["http://[::1]:8000", "https://*:443"]);
        assert!(allowed(&a, "http://[::1]:8000/"));
        assert!(!allowed(&a, "http://[::2]:8000/"));
        assert!(allowed(&a, "https://anything.org/"));
        assert!(!allowed(&a, "https://anything.org:444/"));
    }

    #[test]
    fn sockets_reach_only_declared_and_granted_addresses() {
        use wasmtime_wasi::sockets::SocketAddrUse as Use;
        let parse = |list: &[&str]| parse_addr_patterns(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let access = SocketAccess::new(
            parse(&["127.0.0.1:*", "[::1]:6379"]).unwrap(),
            parse(&["127.0.0.1:5432", "[::1]:*"]).unwrap(),
        );
        let ok = |addr: &str, usage| access.allows(addr.parse().unwrap(), usage);
        assert!(ok("127.0.0.1:5432", Use::TcpConnect));
        assert!(!ok("127.0.0.1:5433", Use::TcpConnect));
        assert!(ok("[::1]:6379", Use::UdpSend));
        assert!(!ok("[::1]:6380", Use::UdpSend));
        assert!(ok("0.0.0.0:0", Use::TcpBind));
        assert!(!ok("0.0.0.0:8080", Use::TcpBind));
        assert!(!ok("127.0.0.1:5432", Use::TcpListen));
        assert!(SocketAccess::default().is_none());
        assert!(parse(&["localhost:80"]).is_err());
        assert!(parse(&["127.0.0.1"]).is_err());
        assert!(parse(&["127.0.0.1:0"]).is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://exa mple.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://*example.com",
            "https://[::1",
            "https://",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(OriginPattern::parse("https://example.com/").is_ok());
    }
}
