//! The SQLite data file as a thing on disk: where it is, whether its directory exists, and the
//! exclusive hold one process keeps on it (`<file>.lock`, with the holder's pid inside).
//!
//! It does not open the database; `sqlite.rs` does, after [`check_directory`].

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

use super::{LockError, StoreError};

/// The file of a `sqlite:` URL, or `None` for an in-memory database.
///
/// # Errors
/// [`StoreError::Setup`] if the URL cannot be read as a SQLite URL.
pub fn database_file(url: &str) -> Result<Option<PathBuf>, StoreError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url).map_err(|_| {
        StoreError::Setup(format!(
            "database_url {url:?} is not a SQLite URL; use sqlite://PATH, e.g. sqlite://lastseen.db"
        ))
    })?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// Checks that the directory `file` would be created in exists, so the error names it rather
/// than SQLite's "unable to open database file".
///
/// # Errors
/// [`StoreError::Setup`] naming the missing directory.
pub fn check_directory(file: &Path) -> Result<(), StoreError> {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(StoreError::Setup(format!(
        "cannot create the SQLite database {}: the directory {} does not exist; create it \
         (mkdir -p {}) or choose another path, e.g. --database-url sqlite://lastseen.db",
        file.display(),
        dir.display(),
        dir.display()
    )))
}

/// The exclusive hold on a SQLite data file, released when dropped (or when the process
/// ends, however it ends: the operating system drops the lock with the file descriptor).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    path: PathBuf,
}

impl DataLock {
    /// Takes the hold on the file of `url` (`None` for an in-memory database), writing this
    /// process's pid into the lock file.
    ///
    /// # Errors
    /// [`LockError::Held`] if another process (or another hold in this one) has it.
    pub fn acquire(url: &str) -> Result<Option<Self>, LockError> {
        let Some(database) = database_file(url)? else {
            return Ok(None);
        };
        check_directory(&database)?;
        let mut name = database.clone().into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let cannot = |error: std::io::Error| {
            StoreError::Setup(format!(
                "cannot write the lock file {}: {error}",
                path.display()
            ))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "a process".to_owned(),
                };
                return Err(LockError::Held {
                    database: database.display().to_string(),
                    lock: path.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(error)) => return Err(cannot(error).into()),
        }
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        writeln!(file, "{}", std::process::id()).map_err(cannot)?;
        file.flush().map_err(cannot)?;
        Ok(Some(Self { _file: file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_on_the_same_file_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let first = DataLock::acquire(&url).unwrap().expect("a file to hold");
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let second = DataLock::acquire(&url).unwrap_err().to_string();
        assert!(
            second.contains(&format!("(pid {} holds", std::process::id())),
            "{second}"
        );
        drop(first);
        DataLock::acquire(&url).unwrap().expect("free again");
    }

    #[test]
    fn memory_databases_need_no_hold_and_missing_directories_are_named() {
        assert!(DataLock::acquire("sqlite::memory:").unwrap().is_none());
        let error = DataLock::acquire("sqlite:///nonexistent-dir/x.db")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the directory /nonexistent-dir does not exist"),
            "{error}"
        );
    }
}
