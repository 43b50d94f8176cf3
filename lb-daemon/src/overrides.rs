//! Runtime changes made with `lbctl` (backends added, weights, drain, maintenance, removal),
//! kept in a state file so they survive a restart of the daemon.
//!
//! The file holds overrides on top of the config, per service (keyed by `proto/vip:port`, which
//! does not change when a service is renamed) and per backend address. Each change is written
//! (temporary file, fsync, rename, fsync of the directory) before it is acknowledged. The config
//! file stays the operator's: where the two disagree, `lbctl status` shows both values.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// File name inside `[daemon] state_dir`.
pub const STATE_FILE: &str = "state.json";
/// Format version written in the file.
pub const STATE_VERSION: u32 = 1;

/// What an operator took a backend out of rotation for (`lbctl backend drain|maintenance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// No new flows; established flows go on.
    Draining,
    /// Out of rotation for maintenance; established flows go on.
    Maintenance,
}

/// What `lbctl` changed about one backend of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendOverride {
    /// Added at run time (not in the config).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// Weight set at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Drained or in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Removed at run time (also when the config lists it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl BackendOverride {
    /// Whether this override changes nothing (and can be dropped from the file).
    pub fn is_empty(&self) -> bool {
        *self == BackendOverride::default()
    }
}

/// All runtime overrides: service key → backend address → override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Format version.
    pub version: u32,
    /// Per service key (`tcp/198.18.0.100:80`).
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<IpAddr, BackendOverride>>,
    /// `lbctl vrrp resign`: this node stays out of the VRRP election until `lbctl vrrp resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vrrp_resigned: bool,
    /// `lbctl node drain`: this node's VIPs stay withdrawn until `lbctl node undrain`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_drained: bool,
}

impl Overrides {
    /// The override of one backend, if any.
    pub fn get(&self, service: &str, addr: IpAddr) -> Option<&BackendOverride> {
        self.services.get(service).and_then(|m| m.get(&addr))
    }

    /// Changes one backend's override, dropping it when it becomes empty.
    pub fn update(&mut self, service: &str, addr: IpAddr, f: impl FnOnce(&mut BackendOverride)) {
        let backends = self.services.entry(service.to_string()).or_default();
        let o = backends.entry(addr).or_default();
        f(o);
        if o.is_empty() {
            backends.remove(&addr);
        }
        if backends.is_empty() {
            self.services.remove(service);
        }
    }

    /// Parses the text of a state file (what [`StateFile::load`] reads; a fuzz target feeds it
    /// arbitrary bytes). The error says what is wrong, without the file's path.
    pub fn parse(text: &str) -> Result<Overrides, String> {
        let o: Overrides = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if o.version != STATE_VERSION {
            return Err(format!(
                "version {} (this lbd reads version {STATE_VERSION})",
                o.version
            ));
        }
        Ok(o)
    }
}

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("cannot read the state file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a state file.
    #[error(
        "state file {path} is not valid: {message} (fix or move it away; lbd does not start over it silently)"
    )]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing failed.
    #[error("cannot write the state file {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The state file of one daemon.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file inside `state_dir`.
    pub fn in_dir(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join(STATE_FILE),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the overrides; a missing file means none.
    pub fn load(&self) -> Result<Overrides, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Overrides {
                    version: STATE_VERSION,
                    ..Overrides::default()
                });
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        Overrides::parse(&text).map_err(|message| StateError::Parse {
            path: self.path.clone(),
            message,
        })
    }

    /// Writes the overrides durably: a crash leaves the old file or the new one, never a mix.
    pub fn save(&self, o: &Overrides) -> Result<(), StateError> {
        save_json(&self.path, o).map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes `value` as JSON durably: a temporary file, fsync, rename, fsync of the directory; a
/// crash leaves the old file or the new one, never a mix.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lbd-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tmpdir("rt");
        let f = StateFile::in_dir(&dir);
        assert_eq!(f.load().unwrap().services.len(), 0);
        let mut o = f.load().unwrap();
        let a = IpAddr::from([198, 18, 0, 24]);
        o.update("tcp/198.18.0.100:80", a, |b| {
            b.added = true;
            b.weight = Some(3);
        });
        o.update("tcp/198.18.0.100:80", IpAddr::from([198, 18, 0, 21]), |b| {
            b.admin = Some(Admin::Draining);
        });
        f.save(&o).unwrap();
        assert_eq!(f.load().unwrap(), o);
        // Clearing an override removes it from the file.
        o.update("tcp/198.18.0.100:80", a, |b| {
            *b = BackendOverride::default();
        });
        assert!(o.get("tcp/198.18.0.100:80", a).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_reset() {
        let dir = tmpdir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let f = StateFile::in_dir(&dir);
        for (text, want) in [
            ("{", "is not valid"),
            (
                "{\"version\":1,\"services\":{\"x\":{\"nope\":{}}}}",
                "is not valid",
            ),
            ("{\"version\":9}", "version 9 (this lbd reads version 1)"),
            (
                "{\"version\":1,\"services\":{\"x\":{\"198.18.0.1\":{\"wat\":1}}}}",
                "unknown field `wat`",
            ),
        ] {
            std::fs::write(f.path(), text).unwrap();
            let e = f.load().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
