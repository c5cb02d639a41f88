//! The mapping set in force: validated whole, fingerprinted, swapped whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use mapping::{MappingError, MappingSet};
use sha2::{Digest, Sha256};

use crate::domain::MappingVersion;

/// A mapping set's files by their name inside the set (`catalogs/x.yaml`,
/// `tenants/y.yaml`), which is also how the store and every error message
/// name them, wherever the files came from.
pub type MappingFiles = BTreeMap<String, String>;

/// A validated mapping set and what it came from.
pub struct LoadedMappings {
    pub set: MappingSet,
    /// SHA-256 (first 16 hex digits) over every file's name and content:
    /// the identity of the whole set (a stored version's, and what `serve`
    /// compares with its directory). Rows are stamped per tenant instead.
    pub fingerprint: String,
    /// Per mapped tenant: SHA-256 (16 hex) of its own file and its
    /// catalog's, the stamp of its effective-permission rows. A change to
    /// one tenant's file, or to a catalog, recomputes exactly the tenants
    /// whose stamp it changes; the others keep their rows.
    tenant_fingerprints: BTreeMap<String, String>,
    /// The exact texts validated.
    pub files: Arc<MappingFiles>,
    /// The store version these files are, when they came from the store.
    pub version: Option<MappingVersion>,
}

impl LoadedMappings {
    /// Validates `files` whole; every error is returned.
    pub fn from_files(
        files: MappingFiles,
        version: Option<MappingVersion>,
    ) -> Result<LoadedMappings, Vec<MappingError>> {
        let set = mapping::validate_sources(&files.iter().collect::<Vec<_>>())?;
        let tenant_fingerprints = set
            .tenants()
            .iter()
            .map(|(name, compiled)| {
                let own = |name: String| {
                    let text = files.get(&name).cloned().unwrap_or_default();
                    (name, text)
                };
                let inputs: MappingFiles = [
                    own(format!("tenants/{name}.yaml")),
                    own(format!("catalogs/{}.yaml", compiled.catalog().id())),
                ]
                .into_iter()
                .collect();
                (name.to_string(), fingerprint(&inputs))
            })
            .collect();
        Ok(LoadedMappings {
            set,
            tenant_fingerprints,
            fingerprint: fingerprint(&files),
            files: Arc::new(files),
            version,
        })
    }

    /// The same set, known as store version `v`.
    pub fn at_version(self, v: MappingVersion) -> LoadedMappings {
        LoadedMappings {
            version: Some(v),
            ..self
        }
    }

    /// The stamp of a mapped tenant's rows (see `tenant_fingerprints`);
    /// `None` for an unmapped tenant.
    pub fn tenant_fingerprint(&self, tenant: &str) -> Option<&str> {
        self.tenant_fingerprints.get(tenant).map(String::as_str)
    }

    fn empty() -> LoadedMappings {
        LoadedMappings {
            set: MappingSet::default(),
            tenant_fingerprints: BTreeMap::new(),
            fingerprint: "none".into(),
            files: Arc::new(MappingFiles::new()),
            version: None,
        }
    }
}

/// The fingerprint of a set of files (see [`LoadedMappings::fingerprint`]).
pub fn fingerprint(files: &MappingFiles) -> String {
    let mut hash = Sha256::new();
    for (name, text) in files {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())[..16].to_string()
}

/// The mapping set in force and where reloads read it.
pub struct Mappings {
    /// The directory a reload reads, for an app that is not following the
    /// store's versions; `None` for an app built without one.
    dir: Option<PathBuf>,
    /// The last set that validated whole.
    current: RwLock<Arc<LoadedMappings>>,
    /// A request switched versions (catching up): the next poll recomputes
    /// the tenants.
    reconcile_due: AtomicBool,
}

impl Mappings {
    /// No mapping files: every tenant is unmapped.
    pub fn empty() -> Self {
        Mappings {
            dir: None,
            current: RwLock::new(Arc::new(LoadedMappings::empty())),
            reconcile_due: AtomicBool::new(false),
        }
    }

    /// Loads and validates `dir`; every error is returned, nothing is loaded
    /// on any error.
    pub fn load(dir: &Path) -> Result<Self, Vec<MappingError>> {
        Ok(Mappings {
            dir: Some(dir.to_path_buf()),
            current: RwLock::new(Arc::new(load_dir(dir)?)),
            reconcile_due: AtomicBool::new(false),
        })
    }

    pub fn current(&self) -> Arc<LoadedMappings> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(in crate::app) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub(in crate::app) fn reconcile_due(&self) {
        self.reconcile_due.store(true, Ordering::Relaxed);
    }

    pub(in crate::app) fn take_reconcile_due(&self) -> bool {
        self.reconcile_due.swap(false, Ordering::Relaxed)
    }

    /// Puts `loaded` in force.
    pub(in crate::app) fn swap(&self, loaded: Arc<LoadedMappings>) {
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
    }
}

/// Reads and validates a directory; errors name the files by their path
/// under `dir`, so an editor can open them at the line.
pub fn load_dir(dir: &Path) -> Result<LoadedMappings, Vec<MappingError>> {
    LoadedMappings::from_files(read_dir(dir)?, None).map_err(|errors| under(dir, errors))
}

/// The same errors with their file names joined to `dir`.
pub fn under(dir: &Path, errors: Vec<MappingError>) -> Vec<MappingError> {
    errors
        .into_iter()
        .map(|mut e| {
            e.at.file = dir.join(&e.at.file).display().to_string();
            e
        })
        .collect()
}

/// Reads `catalogs/*.yaml` and `tenants/*.yaml` of `dir` once, so the
/// fingerprint and the validation see exactly the same bytes. An unreadable
/// file is an error at its path.
pub fn read_dir(dir: &Path) -> Result<MappingFiles, Vec<MappingError>> {
    let mut files = MappingFiles::new();
    let mut errors = Vec::new();
    for sub in ["catalogs", "tenants"] {
        let folder = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(format!("{sub}/{file_name}"), text);
                }
                Err(e) => errors.push(MappingError {
                    at: mapping::Location {
                        file: path.display().to_string(),
                        line: 1,
                        column: 1,
                    },
                    kind: mapping::ErrorKind::Io(e.to_string()),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}
