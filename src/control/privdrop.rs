//! Dropping root: after the listeners are bound, become an unprivileged user for good.
//!
//! Owns the switch (supplementary groups, gid, uid — all three ids each) and its verification:
//! every thread of the process must carry the new ids, and regaining root must fail.
//! It never keeps capabilities (no `PR_SET_KEEPCAPS`): sockets on privileged ports are bound
//! before, and nothing later needs root.
//!
//! Order matters with io_uring. A ring records the credentials of its creator (SQPOLL) and its
//! io-wq worker threads copy the task's credentials when they are created, and glibc's
//! set*id broadcast only reaches threads it started. So: bind listeners, drop privileges, and
//! only then create rings and workers. The thread scan in [`drop_privileges`] catches a ring
//! worker created too early.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;

/// Why privileges could not be dropped. Every variant is fatal: the process must exit.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("user name {0:?} contains a NUL byte")]
    InvalidName(String),
    #[error("looking up user {user:?}: {source}")]
    Lookup { user: String, source: io::Error },
    #[error("refusing to run as {0:?}: it has uid 0")]
    RootTarget(String),
    #[error("cannot switch to user {user:?}: not running as root (uid {uid})")]
    NotRoot { user: String, uid: u32 },
    #[error("{call} failed while switching to user {user:?}: {source}")]
    Switch { call: &'static str, user: String, source: io::Error },
    #[error("privileges not dropped: {0}")]
    Verify(String),
}

/// A resolved account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Switches the whole process to `user` when running as root; when already running as that
/// user (e.g. systemd's `User=`) there is nothing to do. Any other unprivileged start is an error.
pub fn drop_privileges(user: &str) -> Result<(), PrivError> {
    let account = lookup_user(user)?;
    if account.uid == 0 {
        return Err(PrivError::RootTarget(user.to_string()));
    }
    let (ruid, euid, suid) = resuid();
    if euid != 0 {
        if (ruid, euid, suid) == (account.uid, account.uid, account.uid) {
            return Ok(());
        }
        return Err(PrivError::NotRoot { user: user.to_string(), uid: euid });
    }
    let groups = supplementary_groups(&account)?;
    let switch = |call: &'static str, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(PrivError::Switch { call, user: user.to_string(), source: io::Error::last_os_error() })
        }
    };
    // Groups first: once the uid changes, setgroups and setresgid are no longer allowed.
    // SAFETY: setgroups reads `groups.len()` ids from a live slice.
    switch("setgroups", unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain id-setting syscalls (glibc applies them to every thread it started).
    switch("setresgid", unsafe { libc::setresgid(account.gid, account.gid, account.gid) })?;
    switch("setresuid", unsafe { libc::setresuid(account.uid, account.uid, account.uid) })?;
    verify(&account)
}

/// Checks that the switch to `account` holds for every thread and cannot be undone.
fn verify(account: &Account) -> Result<(), PrivError> {
    let uids = resuid();
    if uids != (account.uid, account.uid, account.uid) {
        return Err(PrivError::Verify(format!("uids are {uids:?}")));
    }
    let mut gids = (0, 0, 0);
    // SAFETY: getresgid writes three ids into variables we own.
    unsafe { libc::getresgid(&mut gids.0, &mut gids.1, &mut gids.2) };
    if gids != (account.gid, account.gid, account.gid) {
        return Err(PrivError::Verify(format!("gids are {gids:?}")));
    }
    // SAFETY: setuid(0) is expected to fail with EPERM; if it succeeds we report it and the
    // caller exits.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(PrivError::Verify("setuid(0) succeeded after the switch".to_string()));
    }
    // SAFETY: as above, for the group.
    if account.gid != 0 && unsafe { libc::setgid(0) } == 0 {
        return Err(PrivError::Verify("setgid(0) succeeded after the switch".to_string()));
    }
    verify_threads(account)
}

/// Every task of the process (including io_uring worker threads) must carry the new ids.
fn verify_threads(account: &Account) -> Result<(), PrivError> {
    let tasks = fs::read_dir("/proc/self/task").map_err(|e| PrivError::Verify(format!("/proc/self/task: {e}")))?;
    for task in tasks {
        let Ok(task) = task else { continue };
        // A thread that exited since the listing has no status any more: nothing to check.
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let name = status.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("?").trim();
        for (field, want) in [("Uid:", account.uid), ("Gid:", account.gid)] {
            let ids = status_ids(&status, field);
            if ids.len() != 4 || ids.iter().any(|&id| id != want) {
                return Err(PrivError::Verify(format!(
                    "thread {} ({name}) has {field} {ids:?}, want {want}",
                    task.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(())
}

/// The ids on a line of /proc/PID/status ("Uid:\t0\t0\t0\t0": real, effective, saved, fs).
pub fn status_ids(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|rest| rest.split_whitespace().filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

fn resuid() -> (u32, u32, u32) {
    let mut ids = (0, 0, 0);
    // SAFETY: getresuid writes three ids into variables we own; it cannot fail for itself.
    unsafe { libc::getresuid(&mut ids.0, &mut ids.1, &mut ids.2) };
    ids
}

/// Resolves a user name with `getpwnam_r` (thread-safe, unlike `getpwnam`).
pub fn lookup_user(user: &str) -> Result<Account, PrivError> {
    let name = CString::new(user).map_err(|_| PrivError::InvalidName(user.to_string()))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory we own for the duration of the call; the
        // strings written into `pwd` point into `buf`.
        let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            let source = io::Error::from_raw_os_error(rc);
            return Err(PrivError::Lookup { user: user.to_string(), source });
        }
        if found.is_null() {
            return Err(PrivError::UnknownUser(user.to_string()));
        }
        // SAFETY: getpwnam_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        return Ok(Account { name, uid: pwd.pw_uid, gid: pwd.pw_gid });
    }
}

/// The account's groups from the group database (its primary group included).
fn supplementary_groups(account: &Account) -> Result<Vec<libc::gid_t>, PrivError> {
    let name = CString::new(account.name.as_str()).map_err(|_| PrivError::InvalidName(account.name.clone()))?;
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    for _ in 0..8 {
        let mut count = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `groups` has room for `count` ids; getgrouplist updates count to the number
        // it found (or needs).
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), account.gid, groups.as_mut_ptr(), &mut count) };
        let count = usize::try_from(count).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        groups.resize(count.max(groups.len() * 2), 0);
    }
    Err(PrivError::Lookup { user: account.name.clone(), source: io::Error::other("getgrouplist kept growing") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ids_parse() {
        let status = "Name:\tringlb\nUid:\t65534\t65534\t65534\t65534\nGid:\t0\t0\t0\t0\n";
        assert_eq!(status_ids(status, "Uid:"), [65534; 4]);
        assert_eq!(status_ids(status, "Gid:"), [0; 4]);
        assert!(status_ids(status, "Groups:").is_empty());
    }

    #[test]
    fn root_resolves_to_uid_zero() {
        let root = lookup_user("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
    }

    #[test]
    fn unknown_and_invalid_users_fail_before_anything_changes() {
        let before = resuid();
        assert!(matches!(drop_privileges("ringlb-no-such-user"), Err(PrivError::UnknownUser(_))));
        assert!(matches!(drop_privileges("bad\0name"), Err(PrivError::InvalidName(_))));
        assert!(matches!(drop_privileges("root"), Err(PrivError::RootTarget(_))));
        assert_eq!(resuid(), before);
    }

    #[test]
    fn groups_of_nobody_include_its_primary_group() {
        let Ok(nobody) = lookup_user("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let groups = supplementary_groups(&nobody).expect("groups");
        assert!(groups.contains(&nobody.gid), "{groups:?}");
    }
}
