//! Process signals. The signals ringlb acts on are blocked in every thread (the mask is set before
//! any thread starts) and taken synchronously by the main thread with `sigtimedwait`, so no handler
//! ever runs inside a worker. SIGPIPE is ignored: a write to a closed peer is an error result,
//! never a process-killing signal.

use std::io;
use std::time::Duration;

/// A signal ringlb acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop accepting, drain, exit.
    Terminate,
    /// SIGHUP: reload the configuration.
    Reload,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Ignores SIGPIPE and blocks the handled signals in the calling thread (and every thread it
/// starts afterwards). Call first thing in `main`.
pub fn install() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: setting a signal disposition and the thread's mask.
    unsafe {
        if libc::signal(libc::SIGPIPE, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Waits up to `timeout` for a handled signal.
pub fn wait(timeout: Duration) -> Option<Signal> {
    let set = handled_set();
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: sigtimedwait with a valid set and timeout; siginfo may be null.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGTERM | libc::SIGINT => Some(Signal::Terminate),
        libc::SIGHUP => Some(Signal::Reload),
        _ => None,
    }
}
