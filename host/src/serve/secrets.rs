//! A tenant's secrets: `DATA/tenants/NAME/secrets.json` (mode 0600), names
//! to values. They are written and listed (names only) through the API, and
//! read by the tenant's pods as their environment: a provider's API key, a
//! plugin's `env` grant. The server's own environment is never read for a
//! tenant.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

/// Longest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Most secrets a tenant may keep.
pub const MAX_SECRETS: usize = 256;

/// Secret names look like environment variables.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid secret name (A-Z a-z 0-9 _, not starting with a digit)"))
    }
}

/// The secrets kept in `dir`.
pub fn read(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = dir.join("secrets.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Keeps `secrets` in `dir`.
pub fn write(dir: &Path, secrets: &BTreeMap<String, String>) -> anyhow::Result<()> {
    super::write_file_atomic(&dir.join("secrets.json"), &serde_json::to_vec(secrets)?)
}
