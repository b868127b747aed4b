//! The persistent state of a broker daemon: an embedded ACID store (redb) of tenants (quotas and token
//! hashes), modules (wasm bytes), region definitions, instances and grants, under `--state-dir`.
//!
//! Persistent regions' bytes are not here: each is a file under `<state-dir>/regions/<tenant>/`, mapped
//! shared and made durable by `FlushRegion`; the store only names that file ([`Store::region_path`]).
//! Every mutation is one redb write transaction, committed before the RPC answers, so an acknowledged
//! change survives a crash. The store knows nothing of the API: it fails with its own [`StoreError`],
//! which the control plane's `ApiError` wraps.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created (not a redb file, locked, unreadable).
    #[error("{0}")]
    Open(#[from] redb::DatabaseError),
    /// A transaction, table or commit failed.
    #[error("{0}")]
    Database(#[from] redb::Error),
    /// A record could not be encoded.
    #[error("{0}")]
    Encode(serde_json::Error),
    /// A stored record does not parse.
    #[error("corrupt record: {0}")]
    Corrupt(serde_json::Error),
    /// A directory under the state dir could not be created.
    #[error("{what}: {source}")]
    Directory {
        /// Which directory, as the client may be told (never a server path for a tenant's request).
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

const TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
const REGIONS: TableDefinition<&str, &str> = TableDefinition::new("regions");
const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
const GRANTS: TableDefinition<u64, &str> = TableDefinition::new("grants");

/// A tenant's persisted state: its quotas by name (fields a record lacks take their defaults, so
/// quotas added later load from older records) and its tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "StoredTenant")]
pub struct TenantRecord {
    /// Its quotas.
    pub quotas: broker::Quotas,
    /// Hex SHA-256 hashes of the tenant's tokens.
    pub tokens: Vec<String>,
}

/// A tenant record as stored by this version or by the versions that kept quotas in positional
/// arrays; tried in that order of age, since a positional array would also parse as named quotas.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredTenant {
    Positional(PositionalTenant),
    Named { quotas: broker::Quotas, tokens: Vec<String> },
}

impl From<StoredTenant> for TenantRecord {
    fn from(stored: StoredTenant) -> TenantRecord {
        match stored {
            StoredTenant::Named { quotas, tokens } => TenantRecord { quotas, tokens },
            StoredTenant::Positional(t) => {
                let [region_bytes, regions, instances, handles, memory_bytes] = t.quotas;
                let [modules, module_bytes, compiled_bytes, max_call_timeout_ms] = t.code;
                let quotas = broker::Quotas {
                    region_bytes,
                    regions,
                    instances,
                    handles,
                    memory_bytes,
                    windows: t.windows,
                    windows_per_instance: t.windows_per_instance,
                    modules,
                    module_bytes,
                    compiled_bytes,
                    max_call_timeout_ms,
                    trampolines: t.trampolines,
                    max_workers: t.max_workers,
                    watches: t.watches,
                    cpu_shares: t.cpu_shares,
                    // Those versions had no WASI output.
                    log_bytes: broker::Quotas::DEFAULT_LOG_BYTES,
                };
                TenantRecord { quotas, tokens: t.tokens }
            }
        }
    }
}

/// The tenant record of the versions before quotas were stored by name.
#[derive(Deserialize)]
struct PositionalTenant {
    /// Region bytes, regions, instances, handles, memory bytes.
    quotas: [u64; 5],
    #[serde(default = "default_windows")]
    windows: u64,
    #[serde(default = "default_windows_per_instance")]
    windows_per_instance: u64,
    /// Modules, module bytes, compiled bytes, call-timeout cap.
    #[serde(default = "default_code_quotas")]
    code: [u64; 4],
    #[serde(default = "default_trampolines")]
    trampolines: u64,
    #[serde(default)]
    max_workers: u64,
    #[serde(default = "default_watches")]
    watches: u64,
    #[serde(default = "default_cpu_shares")]
    cpu_shares: u64,
    tokens: Vec<String>,
}

fn default_windows() -> u64 {
    broker::Quotas::DEFAULT_WINDOWS
}

fn default_windows_per_instance() -> u64 {
    broker::Quotas::DEFAULT_WINDOWS_PER_INSTANCE
}

fn default_watches() -> u64 {
    broker::Quotas::DEFAULT_WATCHES
}

fn default_cpu_shares() -> u64 {
    broker::Quotas::DEFAULT_CPU_SHARES
}

fn default_trampolines() -> u64 {
    broker::Quotas::DEFAULT_TRAMPOLINES
}

fn default_code_quotas() -> [u64; 4] {
    use broker::Quotas;
    [
        Quotas::DEFAULT_MODULES,
        Quotas::DEFAULT_MODULE_BYTES,
        Quotas::DEFAULT_COMPILED_BYTES,
        Quotas::DEFAULT_MAX_CALL_TIMEOUT_MS,
    ]
}

/// A region definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionRecord {
    /// Size in bytes.
    pub size: u64,
    /// `handle`, `mirror` or `shared`.
    pub mode: String,
    /// `reject`, `last-writer-wins` or `merge`.
    pub policy: String,
    /// Whether the bytes live in a file under the state dir.
    pub persistent: bool,
    /// Rights bits every app of the tenant opens it with by name. Records written before member
    /// rights existed load with every right: the access their apps had then, until the operator
    /// narrows it (SetMemberRights).
    #[serde(default = "all_rights")]
    pub member_rights: u32,
}

fn all_rights() -> u32 {
    broker::capability::Rights::ALL.bits()
}

/// An instance definition, restored when the daemon starts: started again, or registered stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The module it runs.
    pub module: String,
    /// Call deadline in milliseconds.
    pub call_timeout_ms: u64,
    /// Linear-memory cap in bytes.
    pub max_memory_bytes: u64,
    /// Stopped by `StopInstance` (and not restarted since): it comes back stopped. Records written
    /// before stopped instances were kept have no such field and load as running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// A WASI app's arguments (none in records written before WASI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A WASI app's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// A WASI app's log ring in bytes (the default in records written before WASI).
    #[serde(default = "default_log_bytes", skip_serializing_if = "is_default_log_bytes")]
    pub log_bytes: u64,
    /// A WASI app's directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<broker::wasi::DirGrant>,
}

fn default_log_bytes() -> u64 {
    broker::wasi::DEFAULT_LOG_BYTES
}

fn is_default_log_bytes(n: &u64) -> bool {
    *n == broker::wasi::DEFAULT_LOG_BYTES
}

/// A grant made through the API, re-applied when the daemon starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantRecord {
    /// The region's tenant.
    pub region_tenant: String,
    /// The region's name.
    pub region: String,
    /// The receiving instance's tenant.
    pub instance_tenant: String,
    /// The receiving instance's name.
    pub instance: String,
    /// Rights bits.
    pub rights: u32,
    /// Start of the range.
    pub offset: u64,
    /// Length, or to the end.
    pub len: Option<u64>,
}

/// The redb database, and the state dir it lives in (where persistent regions' files go).
pub struct Store {
    db: Database,
    dir: PathBuf,
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(StoreError::Encode)
}

fn parse<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(StoreError::Corrupt)
}

impl Store {
    /// Opens (or creates) `state.redb` in `dir`, creating `dir` and its `regions/` directory first.
    ///
    /// # Errors
    /// [`StoreError::Directory`] if the directories cannot be created, [`StoreError::Open`] if the file
    /// cannot be opened or is not a redb database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir.join("regions"))
            .map_err(|source| StoreError::Directory { what: dir.display().to_string(), source })?;
        let db = Database::create(dir.join("state.redb"))?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            txn.open_table(TENANTS).map_err(redb::Error::from)?;
            txn.open_table(MODULES).map_err(redb::Error::from)?;
            txn.open_table(REGIONS).map_err(redb::Error::from)?;
            txn.open_table(INSTANCES).map_err(redb::Error::from)?;
            txn.open_table(GRANTS).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(Store { db, dir: dir.to_owned() })
    }

    /// The file of a tenant's persistent region, `<state-dir>/regions/<tenant>/<name>.region`, creating
    /// the tenant's directory if needed. The names were checked against the naming rules, so neither
    /// climbs out of the state dir.
    ///
    /// # Errors
    /// [`StoreError::Directory`] naming the tenant, not the path: the client learns what failed, not
    /// where the daemon keeps its files.
    pub fn region_path(&self, tenant: &str, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.dir.join("regions").join(tenant);
        std::fs::create_dir_all(&dir).map_err(|source| {
            tracing::error!(dir = %dir.display(), "cannot create a tenant's regions directory: {source}");
            StoreError::Directory {
                what: format!("cannot create the regions directory of tenant {tenant}"),
                source,
            }
        })?;
        Ok(dir.join(format!("{name}.region")))
    }

    fn put_str(&self, table: TableDefinition<&str, &str>, key: &str, value: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(table).map_err(redb::Error::from)?.insert(key, value).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn delete_str(&self, table: TableDefinition<&str, &str>, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(table).map_err(redb::Error::from)?.remove(key).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn all_str<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn.open_table(table).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push((k.value().to_owned(), parse(v.value())?));
        }
        Ok(out)
    }

    /// Saves a tenant.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_tenant(&self, name: &str, r: &TenantRecord) -> Result<(), StoreError> {
        self.put_str(TENANTS, name, &json(r)?)
    }

    /// Every tenant.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, StoreError> {
        self.all_str(TENANTS)
    }

    /// Saves a module's bytes under `tenant/name`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_module(&self, key: &str, wasm: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(MODULES).map_err(redb::Error::from)?.insert(key, wasm).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Deletes a module.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete_module(&self, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(MODULES).map_err(redb::Error::from)?.remove(key).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Every module, as `(tenant/name, wasm)`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn modules(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn.open_table(MODULES).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Saves a region definition under `tenant/name`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_region(&self, key: &str, r: &RegionRecord) -> Result<(), StoreError> {
        self.put_str(REGIONS, key, &json(r)?)
    }

    /// Deletes a region definition.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete_region(&self, key: &str) -> Result<(), StoreError> {
        self.delete_str(REGIONS, key)
    }

    /// Every region definition.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn regions(&self) -> Result<Vec<(String, RegionRecord)>, StoreError> {
        self.all_str(REGIONS)
    }

    /// Saves an instance definition under `tenant/name`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_instance(&self, key: &str, r: &InstanceRecord) -> Result<(), StoreError> {
        self.put_str(INSTANCES, key, &json(r)?)
    }

    /// Marks an instance definition stopped or running, in one transaction; a no-op if there is none.
    ///
    /// # Errors
    /// [`StoreError`], also for a stored record that does not parse.
    pub fn set_instance_stopped(&self, key: &str, stopped: bool) -> Result<(), StoreError> {
        self.update(INSTANCES, key, |r: InstanceRecord| InstanceRecord { stopped, ..r })
    }

    /// Sets a region definition's member rights, in one transaction; a no-op if there is none.
    ///
    /// # Errors
    /// [`StoreError`], also for a stored record that does not parse.
    pub fn set_region_members(&self, key: &str, member_rights: u32) -> Result<(), StoreError> {
        self.update(REGIONS, key, |r: RegionRecord| RegionRecord { member_rights, ..r })
    }

    /// Rewrites the record under `key` with `change`, in one transaction; a no-op if there is none.
    fn update<T: Serialize + DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        change: impl FnOnce(T) -> T,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = txn.open_table(table).map_err(redb::Error::from)?;
            let old = t.get(key).map_err(redb::Error::from)?.map(|v| v.value().to_owned());
            if let Some(old) = old {
                let record = change(parse(&old)?);
                t.insert(key, json(&record)?.as_str()).map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Deletes an instance definition.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete_instance(&self, key: &str) -> Result<(), StoreError> {
        self.delete_str(INSTANCES, key)
    }

    /// Every instance definition.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn instances(&self) -> Result<Vec<(String, InstanceRecord)>, StoreError> {
        self.all_str(INSTANCES)
    }

    /// Saves a grant.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_grant(&self, id: u64, r: &GrantRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(GRANTS)
            .map_err(redb::Error::from)?
            .insert(id, json(r)?.as_str())
            .map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Deletes grants.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete_grants(&self, ids: &[u64]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = txn.open_table(GRANTS).map_err(redb::Error::from)?;
            for id in ids {
                t.remove(*id).map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Every grant.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn grants(&self) -> Result<Vec<(u64, GrantRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn.open_table(GRANTS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push((k.value(), parse(v.value())?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_record_written_before_cpu_shares_loads_with_the_default() {
        let old = r#"{"quotas":[1,2,3,4,5],"windows":6,"windows_per_instance":7,"code":[8,9,10,11],
            "trampolines":12,"max_workers":13,"watches":14,"tokens":[]}"#;
        let record: TenantRecord = parse(old).expect("an old record loads");
        let q = record.quotas;
        assert_eq!(q.cpu_shares, broker::Quotas::DEFAULT_CPU_SHARES);
        assert_eq!((q.trampolines, q.max_workers, q.watches), (12, 13, 14));
        assert_eq!((q.region_bytes, q.regions, q.instances, q.handles, q.memory_bytes), (1, 2, 3, 4, 5));
        assert_eq!((q.windows, q.windows_per_instance), (6, 7));
        assert_eq!((q.modules, q.module_bytes, q.compiled_bytes, q.max_call_timeout_ms), (8, 9, 10, 11));
    }

    #[test]
    fn a_tenant_record_stores_its_quotas_by_name_and_reads_them_back() {
        let quotas =
            broker::Quotas { regions: 3, cpu_shares: 7, max_workers: 2, ..broker::Quotas::default() };
        let record = TenantRecord { quotas, tokens: vec!["ab".into()] };
        let text = json(&record).expect("encode");
        assert!(text.contains("\"regions\":3") && text.contains("\"cpu_shares\":7"), "by name: {text}");
        assert_eq!(parse::<TenantRecord>(&text).expect("decode"), record);
        // A quota a record lacks (added by a later version, say) takes its default.
        let without = r#"{"quotas":{"regions":9},"tokens":[]}"#;
        let q = parse::<TenantRecord>(without).expect("decode").quotas;
        assert_eq!((q.regions, q.instances), (9, broker::Quotas::default().instances));
    }

    #[test]
    fn r15_an_instance_record_written_before_stop_kept_instances_loads_as_running() {
        let old = r#"{"module":"app","call_timeout_ms":5000,"max_memory_bytes":1024}"#;
        let record: InstanceRecord = parse(old).expect("an old record loads");
        assert!(!record.stopped);
        assert_eq!(record.module, "app");
        assert_eq!((record.args.len(), record.env.len()), (0, 0), "no WASI arguments or environment");
        assert_eq!(record.log_bytes, broker::wasi::DEFAULT_LOG_BYTES);
        // A running instance's record is written as before, so an older daemon reads it too.
        assert_eq!(json(&record).expect("encode"), old);
    }

    #[test]
    fn r15_marking_an_instance_stopped_keeps_the_rest_of_its_record() {
        let dir = std::env::temp_dir().join(format!("broker-store-stopped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::open(&dir).expect("store");
        let running = InstanceRecord {
            module: "app".into(),
            call_timeout_ms: 7,
            max_memory_bytes: 8,
            stopped: false,
            args: vec!["app".into()],
            env: vec![("K".into(), "v".into())],
            log_bytes: 9000,
            dirs: vec![broker::wasi::DirGrant { path: "d".into(), guest: "/d".into(), writable: true }],
        };
        store.put_instance("t/i", &running).expect("put");
        store.set_instance_stopped("t/i", true).expect("stop");
        store.set_instance_stopped("t/ghost", true).expect("a missing record is a no-op");
        let stopped = InstanceRecord { stopped: true, ..running.clone() };
        assert_eq!(store.instances().expect("read"), vec![("t/i".to_owned(), stopped)]);
        store.set_instance_stopped("t/i", false).expect("restart");
        assert_eq!(store.instances().expect("read"), vec![("t/i".to_owned(), running)]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
