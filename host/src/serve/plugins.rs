//! A tenant's own plugins: uploaded through the API into
//! `DATA/tenants/NAME/plugins/` (the component and its capability file),
//! checked and compiled before the upload is answered, and loaded for that
//! tenant's pods only, beside the builtin plugins every tenant has.
//!
//! An upload builds the tenant's whole new plugin set in memory first: a
//! component that does not load, or whose tools clash with another
//! plugin's, is refused and nothing on disk changes. Pods started before an
//! upload keep the set they started with; pods created after it get the
//! new one.

use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;

use super::error::ApiError;
use super::quota::Quotas;
use super::tenant::Tenant;
use crate::plugin::{PluginRuntime, PluginSet, PluginSource};

/// Plugin names become file names: kept plain.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?} is not a valid plugin name (1-64 characters from a-z 0-9 _ -)"),
        ))
    }
}

/// The tenant's plugin files: (name, component bytes on disk).
fn on_disk(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".wasm")?.to_string();
            Some((name, e.metadata().ok()?.len()))
        })
        .collect();
    found.sort();
    found
}

/// Checks, compiles and installs plugin `name` for `tenant`; returns the
/// plugin's description.
pub async fn install(
    tenant: &Tenant,
    runtime: &Arc<PluginRuntime>,
    quotas: &Quotas,
    name: &str,
    component: Vec<u8>,
    capabilities: Option<String>,
) -> Result<serde_json::Value, ApiError> {
    validate_name(name)?;
    let dir = tenant.dir().join("plugins");
    let others: Vec<(String, u64)> = on_disk(&dir).into_iter().filter(|(n, _)| n != name).collect();
    if others.len() as u64 >= quotas.plugins {
        return Err(storage("plugins", format!("a tenant keeps at most {} plugins", quotas.plugins)));
    }
    let bytes: u64 = others.iter().map(|(_, b)| b).sum::<u64>() + component.len() as u64;
    if bytes > quotas.plugin_bytes() {
        return Err(storage(
            "plugin_mb",
            format!("the tenant's plugins would take {bytes} bytes, more than {} MiB", quotas.plugin_mb),
        ));
    }
    let source = PluginSource {
        name: name.to_string(),
        origin: format!("plugin {name}"),
        bytes: Arc::from(component.as_slice()),
        capabilities: capabilities.clone().map(|text| (format!("plugin {name} capabilities"), text)),
    };
    let mut set = PluginSet::load(runtime.clone(), &[]).await.map_err(ApiError::from)?;
    for (other, _) in &others {
        if let Ok(source) = PluginSource::from_file(&dir.join(format!("{other}.wasm"))) {
            let _ = set.add(source).await;
        }
    }
    set.add(source).await.map_err(|e| ApiError::unprocessable("invalid_plugin", e.message))?;
    let wasm = dir.join(format!("{name}.wasm"));
    let toml = dir.join(format!("{name}.toml"));
    match &capabilities {
        Some(text) => super::write_file_atomic(&toml, text.as_bytes())?,
        None => {
            let _ = std::fs::remove_file(&toml);
        }
    }
    super::write_file_atomic(&wasm, &component)?;
    let description = describe(&set, name);
    tenant.set_plugins(set);
    Ok(description)
}

/// Removes plugin `name`; `false` if the tenant has none of that name.
pub async fn remove(tenant: &Tenant, runtime: &Arc<PluginRuntime>, name: &str) -> Result<bool, ApiError> {
    validate_name(name)?;
    let dir = tenant.dir().join("plugins");
    if std::fs::remove_file(dir.join(format!("{name}.wasm"))).is_err() {
        return Ok(false);
    }
    let _ = std::fs::remove_file(dir.join(format!("{name}.toml")));
    let set = PluginSet::load(runtime.clone(), &[dir]).await.map_err(ApiError::from)?;
    tenant.set_plugins(set);
    Ok(true)
}

/// One plugin of a set, for the API.
pub fn describe(set: &PluginSet, name: &str) -> serde_json::Value {
    match set.plugins().iter().find(|p| p.name() == name) {
        Some(p) => serde_json::json!({
            "name": p.name(),
            "builtin": p.is_builtin(),
            "sha256": p.digest(),
            "tools": p.tools(),
        }),
        None => serde_json::Value::Null,
    }
}

fn storage(quota: &str, message: String) -> ApiError {
    ApiError { status: StatusCode::INSUFFICIENT_STORAGE, ..ApiError::quota(quota, message, None) }
}
