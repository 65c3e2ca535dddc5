//! The pid file (`[runtime] pid_file`): written by `ringlb run` at start-up and removed at exit,
//! read by `ringlb reload` to signal the running process.
//!
//! Owns the file only while it holds this process's pid: it is written through a temporary file
//! and a rename (a reader never sees it half written), refused when it names another live ringlb,
//! and removed at exit only if it still names this process. A pid is signalled only when the
//! process it names runs the same program as the caller (by `/proc/PID/comm`), so that a stale
//! file whose pid was reused never gets an unrelated process signalled.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("pid file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("pid file {}: does not hold a process id", path.display())]
    Garbled { path: PathBuf },
    #[error("pid file {}: ringlb is already running as process {pid}", path.display())]
    Running { path: PathBuf, pid: u32 },
    #[error("pid file {}: process {pid} is not running (stale pid file)", path.display())]
    Stale { path: PathBuf, pid: u32 },
    #[error("pid file {}: process {pid} is {comm:?}, not {ours:?}", path.display())]
    NotRinglb { path: PathBuf, pid: u32, comm: String, ours: String },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
}

/// This process's pid file; removed on drop if it still holds this pid.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`, unless it names another running ringlb.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let io_error = |source| PidFileError::Io { path: path.to_owned(), source };
        match running(path) {
            Ok(pid) if pid != std::process::id() => return Err(PidFileError::Running { path: path.to_owned(), pid }),
            Ok(_) => {}
            Err(PidFileError::Io { source, .. }) if source.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(source));
            }
            // Missing, garbled or stale: ours to replace.
            Err(_) => {}
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        std::fs::write(&temporary, format!("{}\n", std::process::id())).map_err(io_error)?;
        if let Err(e) = std::fs::rename(&temporary, path) {
            let _ = std::fs::remove_file(&temporary);
            return Err(io_error(e));
        }
        Ok(PidFile { path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read(&self.path).is_ok_and(|pid| pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The pid in `path`.
pub fn read(path: &Path) -> Result<u32, PidFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidFileError::Io { path: path.to_owned(), source })?;
    text.trim().parse().ok().filter(|&pid| pid > 0).ok_or_else(|| PidFileError::Garbled { path: path.to_owned() })
}

/// The pid in `path`, if that process is alive and runs the same program as this one.
pub fn running(path: &Path) -> Result<u32, PidFileError> {
    let pid = read(path)?;
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_owned());
    let theirs = comm(&pid.to_string()).map_err(|_| PidFileError::Stale { path: path.to_owned(), pid })?;
    let ours = comm("self").unwrap_or_default();
    if theirs != ours {
        return Err(PidFileError::NotRinglb { path: path.to_owned(), pid, comm: theirs, ours });
    }
    Ok(pid)
}

/// Sends SIGHUP (reload the configuration) to the ringlb named in `path`; returns its pid.
pub fn signal_reload(path: &Path) -> Result<u32, PidFileError> {
    let pid = running(path)?;
    // SAFETY: kill(2) with a pid checked just above to be a running ringlb.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
        return Err(PidFileError::Signal { pid, source: io::Error::last_os_error() });
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-pidfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("ringlb.pid")
    }

    #[test]
    fn written_with_this_pid_and_removed_on_drop() {
        let path = temp("own");
        let file = PidFile::create(&path).expect("create");
        assert_eq!(read(&path).expect("read"), std::process::id());
        assert_eq!(running(&path).expect("running"), std::process::id());
        // Creating it again from the same process is allowed (it is ours).
        drop(PidFile::create(&path).expect("again"));
        assert!(!path.exists());
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_or_garbled_file_is_replaced_and_another_owner_is_left_alone() {
        let path = temp("stale");
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(read(&path), Err(PidFileError::Garbled { .. })));
        drop(PidFile::create(&path).expect("replaces garbage"));
        // A pid past pid_max (2^22) never runs.
        std::fs::write(&path, "99999999\n").expect("write");
        assert!(matches!(running(&path), Err(PidFileError::Stale { pid: 99_999_999, .. })));
        let file = PidFile::create(&path).expect("replaces a stale file");
        // Someone else's file now: our drop must not remove it.
        std::fs::write(&path, "1\n").expect("write");
        drop(file);
        assert_eq!(read(&path).expect("left alone"), 1);
    }

    #[test]
    fn another_program_is_never_signalled() {
        let path = temp("other");
        // pid 1 is init (or the container's first process), never this test binary.
        std::fs::write(&path, "1\n").expect("write");
        let result = signal_reload(&path);
        assert!(matches!(result, Err(PidFileError::NotRinglb { pid: 1, .. })), "{result:?}");
        assert!(PidFile::create(&path).is_ok(), "not a ringlb: replaced");
    }
}
