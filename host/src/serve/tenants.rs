//! The tenant registry: who may use the server and with which token.
//!
//! Each tenant has `DATA/tenants/NAME/tenant.json` (mode 0600): its name,
//! the SHA-256 of its token and its quota overrides. The admin token's hash
//! is `DATA/admin.json`. Tokens are 256 random bits, shown once and never
//! stored. A token names its tenant (`yoi_NAME_HEX`), so checking one is a
//! lookup and one constant-time comparison; a token of an unknown tenant
//! is compared against a dummy hash, so the answer takes as long and says
//! nothing about whether the tenant exists.
//!
//! Every change (by `yoi-host tenant`, or by the admin API) happens under
//! `DATA/tenants/.lock` and rewrites `DATA/tenants/.changed`; a running
//! server reloads when that file changes, so changes take effect without a
//! restart.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::quota::Overrides;

/// What the registry keeps of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant's name.
    pub name: String,
    /// SHA-256 of its token, hex.
    pub token_sha256: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Random, made when the tenant is added: a tenant removed and added
    /// again under its name is another tenant.
    #[serde(default)]
    pub id: String,
    /// Its own quota values.
    #[serde(default)]
    pub quotas: Overrides,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRecord {
    token_sha256: String,
}

/// Tenant names end up in paths: kept plain.
pub fn validate_tenant_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!("{name:?} is not a valid tenant name (1-48 characters from a-z 0-9 -, not starting with -)");
    }
    Ok(())
}

/// A fresh token for `tenant` (or the admin's, for `None`).
fn new_token(tenant: Option<&str>) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(match tenant {
        Some(name) => format!("yoi_{name}_{}", hex::encode(bytes)),
        None => format!("yoiadmin_{}", hex::encode(bytes)),
    })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hash_matches(token: &str, stored_hex: &str) -> bool {
    let mut stored = [0u8; 32];
    let valid = hex::decode_to_slice(stored_hex, &mut stored).is_ok();
    bool::from(hash(token).ct_eq(&stored)) && valid
}

/// The tenant a token names (its form alone, not checked).
fn tenant_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("yoi_")?;
    let (name, _) = rest.rsplit_once('_')?;
    Some(name)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The tenants' records on disk. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TenantStore {
    data: PathBuf,
}

impl TenantStore {
    /// The store in data directory `data` (created, mode 0700).
    pub fn open(data: &Path) -> anyhow::Result<TenantStore> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data.join("tenants"))
            .with_context(|| format!("cannot create {}", data.join("tenants").display()))?;
        Ok(TenantStore { data: data.to_path_buf() })
    }

    /// `DATA/tenants`.
    pub fn root(&self) -> PathBuf {
        self.data.join("tenants")
    }

    /// `DATA/tenants/NAME`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("tenant.json")
    }

    /// Runs `change` under the registry's lock, then tells servers.
    fn change<T>(&self, change: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.root().join(".lock"))
            .context("cannot open the registry's lock")?;
        // SAFETY: flock on a descriptor `lock` owns; the lock goes when it closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            bail!("cannot lock the registry: {}", std::io::Error::last_os_error());
        }
        let result = change()?;
        super::write_file_atomic(&self.root().join(".changed"), format!("{}\n", now()).as_bytes())?;
        Ok(result)
    }

    /// Adds tenant `name`; returns its token (shown once).
    pub fn add(&self, name: &str, quotas: Overrides) -> anyhow::Result<String> {
        validate_tenant_name(name)?;
        self.change(|| {
            if self.record_path(name).exists() {
                bail!("tenant {name:?} already exists");
            }
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.dir(name))?;
            let token = new_token(Some(name))?;
            let record = TenantRecord {
                name: name.to_string(),
                token_sha256: hex::encode(hash(&token)),
                created: now(),
                id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                quotas,
            };
            super::write_file_atomic(&self.record_path(name), &serde_json::to_vec_pretty(&record)?)?;
            Ok(token)
        })
    }

    /// Removes tenant `name` and everything it has.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        validate_tenant_name(name)?;
        self.change(|| {
            if !self.record_path(name).exists() {
                bail!("there is no tenant {name:?}");
            }
            // The record goes first: from then on its token is refused. The
            // directory is moved aside in one step (pods a running server
            // has not stopped yet keep their open files), then deleted.
            std::fs::remove_file(self.record_path(name))?;
            let aside = self.root().join(format!(".removed-{name}-{:016x}", fastrand::u64(..)));
            std::fs::rename(self.dir(name), &aside)
                .with_context(|| format!("cannot remove {}", self.dir(name).display()))?;
            std::fs::remove_dir_all(&aside).with_context(|| format!("cannot remove {}", aside.display()))
        })
    }

    /// Gives tenant `name` a new token (the old one stops working).
    pub fn rotate(&self, name: &str) -> anyhow::Result<String> {
        self.update(name, |record| {
            let token = new_token(Some(&record.name))?;
            record.token_sha256 = hex::encode(hash(&token));
            Ok(token)
        })
    }

    /// Sets quota overrides of tenant `name`.
    pub fn set_quotas(&self, name: &str, assignments: &[String]) -> anyhow::Result<Overrides> {
        self.update(name, |record| {
            for a in assignments {
                record.quotas.set(a)?;
            }
            Ok(record.quotas.clone())
        })
    }

    fn update<T>(&self, name: &str, edit: impl FnOnce(&mut TenantRecord) -> anyhow::Result<T>) -> anyhow::Result<T> {
        validate_tenant_name(name)?;
        self.change(|| {
            let mut record = self.read(name)?.ok_or_else(|| anyhow::anyhow!("there is no tenant {name:?}"))?;
            let result = edit(&mut record)?;
            super::write_file_atomic(&self.record_path(name), &serde_json::to_vec_pretty(&record)?)?;
            Ok(result)
        })
    }

    fn read(&self, name: &str) -> anyhow::Result<Option<TenantRecord>> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every tenant, by name.
    pub fn list(&self) -> anyhow::Result<BTreeMap<String, TenantRecord>> {
        let mut tenants = BTreeMap::new();
        for entry in std::fs::read_dir(self.root())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if validate_tenant_name(&name).is_err() {
                continue;
            }
            if let Some(record) = self.read(&name)? {
                tenants.insert(name, record);
            }
        }
        Ok(tenants)
    }

    /// Makes a new admin token (the old one stops working).
    pub fn rotate_admin(&self) -> anyhow::Result<String> {
        self.change(|| {
            let token = new_token(None)?;
            let record = AdminRecord { token_sha256: hex::encode(hash(&token)) };
            super::write_file_atomic(&self.data.join("admin.json"), &serde_json::to_vec_pretty(&record)?)?;
            Ok(token)
        })
    }

    fn admin_hash(&self) -> anyhow::Result<Option<String>> {
        let path = self.data.join("admin.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: AdminRecord =
                    serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
                Ok(Some(record.token_sha256))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// What identifies the registry's last change.
    fn stamp(&self) -> Option<(u64, i64, i64)> {
        let meta = std::fs::metadata(self.root().join(".changed")).ok()?;
        Some((meta.ino(), meta.mtime(), meta.mtime_nsec()))
    }
}

#[derive(Default)]
struct Snapshot {
    stamp: Option<(u64, i64, i64)>,
    tenants: BTreeMap<String, Arc<TenantRecord>>,
    admin: Option<String>,
}

/// The registry as a server sees it: reloaded when it changed.
pub struct Registry {
    store: TenantStore,
    snapshot: RwLock<Arc<Snapshot>>,
}

/// Who a request's token belongs to.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A tenant.
    Tenant(Arc<TenantRecord>),
    /// The operator, through the admin token.
    Admin,
}

impl Registry {
    /// The registry of `store`, read now.
    pub fn new(store: TenantStore) -> anyhow::Result<Registry> {
        let registry = Registry { store, snapshot: RwLock::new(Arc::new(Snapshot::default())) };
        registry.reload()?;
        Ok(registry)
    }

    /// The records on disk.
    pub fn store(&self) -> &TenantStore {
        &self.store
    }

    fn reload(&self) -> anyhow::Result<Arc<Snapshot>> {
        let stamp = self.store.stamp();
        let tenants = self.store.list()?.into_iter().map(|(n, r)| (n, Arc::new(r))).collect();
        let snapshot = Arc::new(Snapshot { stamp, tenants, admin: self.store.admin_hash()? });
        *self.snapshot.write() = snapshot.clone();
        Ok(snapshot)
    }

    /// The registry now, reloaded if it changed since it was last read.
    fn current(&self) -> Arc<Snapshot> {
        let snapshot = self.snapshot.read().clone();
        if snapshot.stamp == self.store.stamp() {
            return snapshot;
        }
        match self.reload() {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("cannot reload the tenant registry, keeping the last one: {e:#}");
                snapshot
            }
        }
    }

    /// Every tenant now.
    pub fn tenants(&self) -> Vec<Arc<TenantRecord>> {
        self.current().tenants.values().cloned().collect()
    }

    /// Tenant `name`, if it exists now.
    pub fn tenant(&self, name: &str) -> Option<Arc<TenantRecord>> {
        self.current().tenants.get(name).cloned()
    }

    /// Whose token `token` is, if anyone's.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        const DUMMY: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        let snapshot = self.current();
        if token.starts_with("yoiadmin_") {
            let stored = snapshot.admin.as_deref();
            return hash_matches(token, stored.unwrap_or(DUMMY)).then_some(Caller::Admin).filter(|_| stored.is_some());
        }
        let record = tenant_of(token).and_then(|name| snapshot.tenants.get(name));
        let matches = hash_matches(token, record.map_or(DUMMY, |r| r.token_sha256.as_str()));
        match record {
            Some(record) if matches => Some(Caller::Tenant(record.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_work_until_rotated_or_removed_and_are_stored_only_as_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = TenantStore::open(tmp.path()).unwrap();
        let registry = Registry::new(store.clone()).unwrap();
        let token = store.add("acme", Overrides::default()).unwrap();
        assert!(token.len() >= 4 + 4 + 1 + 64, "{token}");
        assert!(matches!(registry.authenticate(&token), Some(Caller::Tenant(r)) if r.name == "acme"));
        let file = std::fs::read_to_string(store.dir("acme").join("tenant.json")).unwrap();
        assert!(!file.contains(&token[9..]), "the token itself is stored");
        let mode = std::fs::metadata(store.dir("acme").join("tenant.json")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);

        assert!(registry.authenticate("yoi_acme_00").is_none());
        assert!(registry.authenticate("yoi_nobody_00").is_none());
        assert!(registry.authenticate("").is_none());
        assert!(registry.authenticate("yoiadmin_00").is_none(), "no admin token yet");

        let rotated = store.rotate("acme").unwrap();
        assert!(registry.authenticate(&token).is_none());
        assert!(registry.authenticate(&rotated).is_some());
        assert!(store.add("acme", Overrides::default()).is_err());

        let admin = store.rotate_admin().unwrap();
        assert!(matches!(registry.authenticate(&admin), Some(Caller::Admin)));

        store.remove("acme").unwrap();
        assert!(registry.authenticate(&rotated).is_none());
        assert!(!store.dir("acme").exists());
        for bad in ["", "A", "a/b", "..", "-a", &"a".repeat(49)] {
            assert!(store.add(bad, Overrides::default()).is_err(), "{bad:?}");
        }
    }
}
