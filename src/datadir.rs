//! The data directory: created readable by the server's user alone (0700), locked so that one
//! process at a time uses it, and home of the small files a node keeps besides its room log
//! (the generated cookie key, the node id).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

/// Why the data directory cannot be used.
#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("data dir {0} is in use by another nebula process (one process per data dir)")]
    InUse(String),
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

/// An open, locked data directory. The lock is released when this is dropped (or when the
/// process dies, however it dies: it is an `flock`).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed (mode 0700; an existing directory is set to 0700) and locks it.
    /// A second process on the same directory gets a clear error: two writers on one SQLite
    /// log would number messages twice.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse(path.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This node's id: `given` when set, else the one kept in `node-id`, else a new one
    /// (hostname plus a short random suffix) written there, so that a restarted node keeps its
    /// id and every replica of a scaled service (each with its own data dir) has its own.
    pub fn node_id(&self, given: Option<&str>) -> Result<Arc<str>, DataDirError> {
        if let Some(id) = given.map(str::trim).filter(|s| !s.is_empty()) {
            return Ok(id.into());
        }
        let file = self.path.join("node-id");
        match std::fs::read_to_string(&file) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "nebula".into());
        let id = format!("{}-{:04x}", host.trim(), rand::random::<u16>());
        write_private(&file, id.as_bytes())?;
        Ok(id.into())
    }
}

/// Writes a file readable by the server's user alone (0600), synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_dir_and_a_kept_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let a = DataDir::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let err = DataDir::open(&path).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        let id = a.node_id(None).unwrap();
        assert_eq!(a.node_id(None).unwrap(), id);
        assert_eq!(&*a.node_id(Some("n1")).unwrap(), "n1");
        drop(a);
        let b = DataDir::open(&path).unwrap();
        assert_eq!(b.node_id(None).unwrap(), id);
    }
}
