//! The per-pod key/value store that plugins reach through `yoi:plugin/state`.
//!
//! Every tool call runs in a fresh instance, so whatever a plugin must
//! remember between calls (the file tools' read tracker) lives here. Each
//! plugin has its own namespace inside a pod; the host can read all of them.
//! Quotas keep one plugin from filling the host's memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most bytes (keys plus values) one plugin may keep in one pod.
pub const MAX_PLUGIN_BYTES: usize = 16 * 1024 * 1024;

/// A pod's plugin store: a cheap handle, clones share the same store.
#[derive(Clone, Debug, Default)]
pub struct PluginStore {
    inner: Arc<Mutex<HashMap<String, Namespace>>>,
}

#[derive(Debug, Default)]
struct Namespace {
    entries: BTreeMap<String, Vec<u8>>,
    bytes: usize,
}

impl PluginStore {
    /// An empty store.
    pub fn new() -> PluginStore {
        PluginStore::default()
    }

    /// The value `plugin` stored under `key`.
    pub fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        let map = self.inner.lock();
        map.get(plugin)?.entries.get(key).cloned()
    }

    /// Stores a value for `plugin`, within the quotas.
    pub fn set(&self, plugin: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit", key.len()));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("value of {} bytes exceeds the {MAX_VALUE_BYTES}-byte limit", value.len()));
        }
        let mut map = self.inner.lock();
        let ns = map.entry(plugin.to_string()).or_default();
        let old = ns.entries.get(key).map_or(0, |v| key.len() + v.len());
        let new_total = ns.bytes - old + key.len() + value.len();
        if new_total > MAX_PLUGIN_BYTES {
            return Err(format!("the plugin's state in this pod would exceed {MAX_PLUGIN_BYTES} bytes"));
        }
        ns.bytes = new_total;
        ns.entries.insert(key.to_string(), value);
        Ok(())
    }

    /// Removes a key of `plugin`.
    pub fn delete(&self, plugin: &str, key: &str) {
        let mut map = self.inner.lock();
        if let Some(ns) = map.get_mut(plugin)
            && let Some(v) = ns.entries.remove(key)
        {
            ns.bytes -= key.len() + v.len();
        }
    }

    /// The keys of `plugin` that start with `prefix`, sorted.
    pub fn keys(&self, plugin: &str, prefix: &str) -> Vec<String> {
        let map = self.inner.lock();
        let Some(ns) = map.get(plugin) else { return Vec::new() };
        ns.entries.range(prefix.to_string()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect()
    }

    /// Every entry of `plugin`, for the host to inspect.
    pub fn entries(&self, plugin: &str) -> BTreeMap<String, Vec<u8>> {
        let map = self.inner.lock();
        map.get(plugin).map(|ns| ns.entries.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_do_not_see_each_others_keys() {
        let state = PluginStore::new();
        state.set("a", "k", b"1".to_vec()).unwrap();
        assert_eq!(state.get("a", "k"), Some(b"1".to_vec()));
        assert_eq!(state.get("b", "k"), None);
        assert!(state.keys("b", "").is_empty());
    }

    #[test]
    fn keys_are_listed_by_prefix_in_order() {
        let state = PluginStore::new();
        for k in ["read:/b", "read:/a", "other", "read"] {
            state.set("p", k, vec![]).unwrap();
        }
        assert_eq!(state.keys("p", "read:"), vec!["read:/a", "read:/b"]);
        state.delete("p", "read:/a");
        assert_eq!(state.keys("p", "read:"), vec!["read:/b"]);
    }

    #[test]
    fn quotas_hold_and_replacing_frees_space() {
        let state = PluginStore::new();
        assert!(state.set("p", &"k".repeat(MAX_KEY_BYTES + 1), vec![]).is_err());
        assert!(state.set("p", "k", vec![0; MAX_VALUE_BYTES + 1]).is_err());
        let n = MAX_PLUGIN_BYTES / MAX_VALUE_BYTES;
        for i in 0..n - 1 {
            state.set("p", &i.to_string(), vec![0; MAX_VALUE_BYTES]).unwrap();
        }
        assert!(state.set("p", "last", vec![0; MAX_VALUE_BYTES]).is_err());
        // Overwriting an entry counts only the difference.
        state.set("p", "0", vec![0; MAX_VALUE_BYTES]).unwrap();
        state.delete("p", "0");
        state.set("p", "last", vec![0; MAX_VALUE_BYTES]).unwrap();
    }
}
