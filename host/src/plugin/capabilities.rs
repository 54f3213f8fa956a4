//! What a plugin may use beyond its pod's files, and the checks made when it
//! loads.
//!
//! A plugin declares what it needs in `NAME.toml` beside `NAME.wasm`
//! ([`Declared`]); a pod's manifest grants what each plugin may actually have
//! (`[[plugins.grant]]`, [`Grant`]); a call gets the intersection
//! ([`Granted`]). Nothing is granted by default, except that the builtin
//! plugins get what they declare.
//!
//! At load, the component's own description is checked: the `yoi:plugin`
//! version it was built against must be compatible with the host's, and
//! every interface it imports must be one the host offers to it. An
//! interface it did not declare (`yoi:plugin/pods`) refuses the load, so a
//! plugin never links against ambient access it was not meant to have.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::WIT_VERSION;
use super::network::{HttpAccess, SocketAccess, parse_addr_patterns, parse_patterns};

/// A plugin's capability file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Environment variables it reads.
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether it keeps files in a private data directory (per pod).
    #[serde(default)]
    pub data_dir: bool,
    /// Whether it runs child pods (`yoi:plugin/pods`).
    #[serde(default)]
    pub pods: bool,
    /// Origins it sends HTTP requests to (`https://api.example.com`,
    /// `http://127.0.0.1:*`, `https://*.example.com`).
    #[serde(default)]
    pub http: Vec<String>,
    /// Socket addresses it connects to (`127.0.0.1:5432`, `10.0.0.7:*`).
    #[serde(default)]
    pub sockets: Vec<String>,
}

impl Declared {
    /// Parses a capability file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Declared, String> {
        let declared: Declared = toml::from_str(text).map_err(|e| format!("{origin}: {}", e.to_string().trim()))?;
        for var in &declared.env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(format!("{origin}: env: {var:?} is not a variable name"));
            }
        }
        parse_patterns(&declared.http).map_err(|e| format!("{origin}: http: {e}"))?;
        parse_addr_patterns(&declared.sockets).map_err(|e| format!("{origin}: sockets: {e}"))?;
        Ok(declared)
    }
}

/// One `[[plugins.grant]]` of a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The plugin's name (its file name without `.wasm`, `-` as `_` for builtins).
    pub plugin: String,
    /// The component's SHA-256 (hex); another component of that name is refused.
    pub sha256: Option<String>,
    /// Environment variables it may read (their values come from the host's environment).
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether it gets its private data directory.
    #[serde(default)]
    pub data_dir: bool,
    /// Whether it may run child pods.
    #[serde(default)]
    pub pods: bool,
    /// Origins it may send HTTP requests to (patterns as in [`Declared::http`]).
    #[serde(default)]
    pub http: Vec<String>,
    /// Socket addresses it may connect to (patterns as in [`Declared::sockets`]).
    #[serde(default)]
    pub sockets: Vec<String>,
}

impl Grant {
    /// Checks what serde cannot: the HTTP patterns.
    pub fn validate(&self) -> Result<(), String> {
        parse_patterns(&self.http).map_err(|e| format!("plugin `{}`: http: {e}", self.plugin))?;
        parse_addr_patterns(&self.sockets).map_err(|e| format!("plugin `{}`: sockets: {e}", self.plugin))?;
        Ok(())
    }
}

/// What one plugin has in one pod: declared ∩ granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    /// Variables and their values.
    pub env: Vec<(String, String)>,
    /// Its private directory (created), preopened read-write at its real path
    /// and named to the plugin by `YOI_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// Whether `yoi:plugin/pods` works for it.
    pub pods: bool,
    /// The origins its `wasi:http` requests may go to.
    pub http: HttpAccess,
    /// The addresses its `wasi:sockets` connections may go to.
    pub sockets: SocketAccess,
}

/// Everything a pod's plugins have, by plugin name.
pub type Grants = BTreeMap<String, Granted>;

/// `major.minor.patch`.
fn version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether a plugin built against `theirs` runs in a host speaking `ours`:
/// the same major version, and for 0.x the same minor version.
fn compatible(ours: (u64, u64, u64), theirs: (u64, u64, u64)) -> bool {
    ours.0 == theirs.0 && (ours.0 != 0 || ours.1 == theirs.1)
}

/// Interface packages every plugin may import. `wasi:http` and
/// `wasi:sockets` link for every plugin (toolchains import them by default),
/// but a request or connection succeeds only where the plugin's grants say so.
const OFFERED: &[&str] =
    &["wasi:cli", "wasi:clocks", "wasi:filesystem", "wasi:http", "wasi:io", "wasi:random", "wasi:sockets"];

/// Checks a component's exports and imports (their names, such as
/// `yoi:plugin/tool@0.1.0`) against the host and what the plugin declared.
pub fn check_component<'a>(
    exports: impl IntoIterator<Item = &'a str>,
    imports: impl IntoIterator<Item = &'a str>,
    declared: &Declared,
) -> Result<(), String> {
    let ours = version(WIT_VERSION).expect("WIT_VERSION is a version");
    let check_version = |name: &str| -> Result<(), String> {
        let Some((_, v)) = name.split_once('@') else {
            return Err(format!("{name} carries no version; build it against yoi:plugin@{WIT_VERSION}"));
        };
        match version(v) {
            Some(theirs) if compatible(ours, theirs) => Ok(()),
            _ => Err(format!(
                "built against yoi:plugin@{v}, but this host speaks yoi:plugin@{WIT_VERSION}; rebuild it against \
                 a compatible version ({}.{}.x)",
                ours.0, ours.1
            )),
        }
    };
    let tool = exports.into_iter().find(|name| name.starts_with("yoi:plugin/tool"));
    match tool {
        Some(name) => check_version(name)?,
        None => {
            return Err(format!("does not export yoi:plugin/tool@{WIT_VERSION} (is it built for the `plugin` world?)"));
        }
    }
    for name in imports {
        let interface = name.split('@').next().unwrap_or(name);
        let package = interface.split('/').next().unwrap_or(interface);
        if package == "yoi:plugin" {
            check_version(name)?;
            if interface == "yoi:plugin/pods" && !declared.pods {
                return Err(format!("imports {name} but does not declare `pods = true` in its capability file"));
            }
        } else if !OFFERED.contains(&package) {
            return Err(format!(
                "imports {name}, which yoi-host does not offer to plugins (offered: {}, yoi:plugin)",
                OFFERED.join(", ")
            ));
        }
    }
    Ok(())
}

/// What `declared` ∩ `grant` gives a plugin in the pod `pod`. `env` reads
/// the host environment; data directories live under `data_root/POD/PLUGIN`.
pub fn effective(
    plugin: &str,
    declared: &Declared,
    grant: Option<&Grant>,
    builtin: bool,
    pod: &str,
    data_root: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Granted, String> {
    let full;
    let grant = match (grant, builtin) {
        (Some(g), _) => g,
        (None, true) => {
            full = Grant {
                plugin: plugin.to_string(),
                sha256: None,
                env: declared.env.clone(),
                data_dir: declared.data_dir,
                pods: declared.pods,
                http: declared.http.clone(),
                sockets: declared.sockets.clone(),
            };
            &full
        }
        (None, false) => return Ok(Granted::default()),
    };
    let env = declared
        .env
        .iter()
        .filter(|v| grant.env.contains(v))
        .filter_map(|v| env(v).map(|value| (v.clone(), value)))
        .collect();
    let data_dir = if declared.data_dir && grant.data_dir {
        let dir = data_root.join(pod).join(plugin);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Some(dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?)
    } else {
        None
    };
    let http = HttpAccess::new(parse_patterns(&declared.http)?, parse_patterns(&grant.http)?);
    let sockets = SocketAccess::new(parse_addr_patterns(&declared.sockets)?, parse_addr_patterns(&grant.sockets)?);
    Ok(Granted { env, data_dir, pods: declared.pods && grant.pods, http, sockets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compatible_within_a_minor_of_zero_x() {
        let pods = Declared { pods: true, ..Declared::default() };
        let ok = |export: &str, imports: &[&str], d: &Declared| check_component([export], imports.iter().copied(), d);
        assert!(ok("yoi:plugin/tool@0.1.7", &["yoi:plugin/log@0.1.0", "wasi:io/streams@0.2.6"], &pods).is_ok());
        let err = ok("yoi:plugin/tool@0.2.0", &[], &pods).unwrap_err();
        assert!(err.contains("yoi:plugin@0.2.0") && err.contains(&format!("yoi:plugin@{WIT_VERSION}")), "{err}");
        let err = ok("yoi:plugin/tool@0.1.0", &["yoi:plugin/pods@0.1.0"], &Declared::default()).unwrap_err();
        assert!(err.contains("pods = true"), "{err}");
        assert!(ok("yoi:plugin/tool@0.1.0", &["wasi:http/outgoing-handler@0.2.6"], &pods).is_ok());
        let err = ok("yoi:plugin/tool@0.1.0", &["wasi:keyvalue/store@0.2.0"], &pods).unwrap_err();
        assert!(err.contains("does not offer"), "{err}");
        assert!(check_component(["other:x/y@1.0.0"], [], &pods).unwrap_err().contains("does not export"));
    }

    #[test]
    fn a_plugin_gets_what_it_declared_and_was_granted() {
        let tmp = tempfile::tempdir().unwrap();
        let declared = Declared {
            env: vec!["A".into(), "B".into()],
            data_dir: true,
            pods: false,
            http: vec!["http://127.0.0.1:*".into()],
            sockets: vec![],
        };
        let grant = Grant {
            plugin: "p".into(),
            env: vec!["B".into(), "C".into()],
            data_dir: true,
            pods: true,
            sha256: None,
            http: vec!["http://127.0.0.1:8080".into()],
            sockets: vec!["127.0.0.1:5432".into()],
        };
        let env = |v: &str| Some(format!("value of {v}"));
        let got = effective("p", &declared, Some(&grant), false, "pod", tmp.path(), &env).unwrap();
        assert_eq!(got.env, [("B".to_string(), "value of B".to_string())]);
        assert!(got.data_dir.unwrap().ends_with("pod/p"));
        assert!(!got.pods);
        assert!(got.http.check(&"http://127.0.0.1:8080/".parse().unwrap()).is_ok());
        assert!(got.http.check(&"http://127.0.0.1:8081/".parse().unwrap()).is_err());
        assert!(got.sockets.is_none(), "granted but not declared");
        let none = effective("p", &declared, None, false, "pod", tmp.path(), &env).unwrap();
        assert_eq!(none, Granted::default());
    }
}
