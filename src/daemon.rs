//! Start-up as a service, done once before the event loop: detaching from the terminal (daemonize),
//! the pid file, and dropping root privileges.
//!
//! The order is fixed by `main`: bind and open the log file while privileged, detach, drop
//! privileges, then build the loop. Detaching reports back through a pipe, so the command that
//! started the daemon exits 0 only once the daemon serves, and non-zero with the daemon's own
//! message if it failed on the way (the daemonize crate alone would exit 0 in both cases).
//!
//! Owns: detaching, the pid file, the privilege drop. May not touch: the event loop.
use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Read, Write},
    os::fd::FromRawFd,
    path::{Path, PathBuf},
};

/// Everything that can stop the daemon from coming up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Started as root with no `user` to run as.
    #[error(
        "refusing to run as root: set `user` (and optionally `group`) in the configuration to the \
         account chatd should run as after binding its port"
    )]
    RootWithoutUser,
    /// The user or group does not exist.
    #[error("no such {kind} `{name}`")]
    NoSuchAccount {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// `user` is set but the process cannot switch to it.
    #[error("`user = \"{0}\"` needs chatd to be started as root")]
    NotRoot(String),
    /// A privilege-dropping call failed.
    #[error("cannot drop privileges: {call} failed: {source}")]
    Drop {
        /// The call.
        call: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Root could be regained after the drop.
    #[error("privileges were not dropped: root can be regained")]
    Regained,
    /// Another process holds the pid file.
    #[error("pid file {path} is locked by a running chatd{pid}")]
    PidFileLocked {
        /// The pid file.
        path: PathBuf,
        /// " (pid N)" if the file names one.
        pid: String,
    },
    /// The pid file could not be created.
    #[error("pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Forking, the readiness pipe or the daemonize crate failed.
    #[error("cannot detach: {0}")]
    Detach(String),
}

/// Result type of this module.
pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// The account to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// User name.
    pub user: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Group id.
    pub gid: libc::gid_t,
}

/// Whether the process runs with root's effective user id.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Looks up `user` and `group` (default: the user's primary group) in the system databases.
pub fn lookup(user: &str, group: Option<&str>) -> Result<Account> {
    let no_user = || DaemonError::NoSuchAccount { kind: "user", name: user.to_owned() };
    let c_user = CString::new(user).map_err(|_| no_user())?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (whose length we pass) and sets `result`
    // to `&pwd` on success or null if there is no such user.
    let (uid, primary_gid) = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result = std::ptr::null_mut();
        let rc =
            libc::getpwnam_r(c_user.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return Err(no_user());
        }
        (pwd.pw_uid, pwd.pw_gid)
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => {
            let no_group = || DaemonError::NoSuchAccount { kind: "group", name: group.to_owned() };
            let c_group = CString::new(group).map_err(|_| no_group())?;
            // SAFETY: as above, for getgrnam_r.
            unsafe {
                let mut grp: libc::group = std::mem::zeroed();
                let mut result = std::ptr::null_mut();
                let rc = libc::getgrnam_r(
                    c_group.as_ptr(),
                    &mut grp,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                );
                if rc != 0 || result.is_null() {
                    return Err(no_group());
                }
                grp.gr_gid
            }
        }
    };
    Ok(Account { user: user.to_owned(), uid, gid })
}

fn check(call: &'static str, rc: libc::c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(DaemonError::Drop { call, source: io::Error::last_os_error() })
    }
}

/// Drops root for good: supplementary groups cleared first, then the group, then the user (real,
/// effective and saved ids alike), then a check that root cannot be regained. Capabilities go
/// with the user id (the kernel clears them when all user ids leave 0).
pub fn drop_privileges(account: &Account) -> Result<()> {
    // SAFETY: these calls take plain integers (and a null list of length 0) and report failure
    // through their return value, which is checked.
    unsafe {
        check("setgroups", libc::setgroups(0, std::ptr::null()))?;
        check("setresgid", libc::setresgid(account.gid, account.gid, account.gid))?;
        check("setresuid", libc::setresuid(account.uid, account.uid, account.uid))?;
        if account.uid != 0 && (libc::setuid(0) == 0 || libc::seteuid(0) == 0) {
            return Err(DaemonError::Regained);
        }
    }
    Ok(())
}

/// The daemon's end of the readiness pipe: says "serving" or why it could not start.
#[derive(Debug)]
pub struct Readiness(Option<File>);

impl Readiness {
    /// No one is waiting (foreground mode).
    pub fn none() -> Readiness {
        Readiness(None)
    }

    /// The write end of a readiness pipe someone else waits on: a worker's word to its master
    /// (see `master`), which reads it as the starting command reads the daemon's.
    pub fn new(pipe: File) -> Readiness {
        Readiness(Some(pipe))
    }

    /// Tells the starting command that the daemon serves; it exits 0.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.0.take() {
            let _ = pipe.write_all(b"ok\n");
        }
    }

    /// Tells the starting command why the daemon stopped; it prints this and exits 1.
    pub fn fail(&mut self, message: &str) {
        if let Some(mut pipe) = self.0.take() {
            let _ = pipe.write_all(message.as_bytes());
        }
    }
}

/// Fails early, with the holder's pid, if another process has the pid file locked.
pub fn check_pid_file(path: &Path) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(DaemonError::PidFile { path: path.to_owned(), source }),
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; the lock (if taken) goes away when `file` closes.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
    if locked {
        let pid = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
        return Err(DaemonError::PidFileLocked { path: path.to_owned(), pid });
    }
    Ok(())
}

/// Detaches from the terminal: fork, setsid, fork, umask 027, cwd `/`, pid file created and
/// locked, stdout and stderr to `stdio` (or /dev/null).
///
/// In the starting process this does not return: it waits for the daemon's word on the pipe and
/// exits with 0 (serving) or 1 (the daemon's message printed to stderr). In the daemon it returns
/// the pipe's write end.
pub fn detach(pid_file: Option<&Path>, stdio: Option<&File>) -> Result<Readiness> {
    if let Some(p) = pid_file {
        check_pid_file(p)?;
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(DaemonError::Detach(format!("pipe: {}", io::Error::last_os_error())));
    }
    // SAFETY: the two descriptors were just created and are owned by nothing else.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let mut d = daemonize::Daemonize::new().working_directory("/").umask(0o027);
    if let Some(p) = pid_file {
        d = d.pid_file(p);
    }
    if let Some(f) = stdio {
        let (out, err) = f
            .try_clone()
            .and_then(|a| f.try_clone().map(|b| (a, b)))
            .map_err(|e| DaemonError::Detach(format!("log file: {e}")))?;
        d = d.stdout(out).stderr(err);
    }
    match d.execute() {
        daemonize::Outcome::Parent(Err(e)) => Err(DaemonError::Detach(e.to_string())),
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(write_end);
            let mut word = String::new();
            let _ = read_end.read_to_string(&mut word);
            match word.trim() {
                "ok" => std::process::exit(0),
                "" => eprintln!("chatd: the daemon exited during start-up (see its log)"),
                message => eprintln!("chatd: {message}"),
            }
            std::process::exit(1);
        }
        daemonize::Outcome::Child(Err(e)) => {
            let mut r = Readiness(Some(write_end));
            let message = match pid_file {
                Some(p) if e.to_string().contains("lock pid file") => {
                    DaemonError::PidFileLocked { path: p.to_owned(), pid: String::new() }
                        .to_string()
                }
                _ => format!("cannot detach: {e}"),
            };
            r.fail(&message);
            std::process::exit(1);
        }
        daemonize::Outcome::Child(Ok(_)) => {
            drop(read_end);
            Ok(Readiness(Some(write_end)))
        }
    }
}

/// Removes the pid file at exit, if it still names this process.
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The name of the user the process runs as, for the start-up log line (the numeric id if the
/// passwd database has no entry for it).
pub fn current_user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: sysconf has no preconditions; -1 means "no suggestion".
    let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let start = usize::try_from(hint).ok().filter(|&n| n > 0).unwrap_or(PW_BUF_FALLBACK);
    user_name(uid, start, PW_BUF_MAX).unwrap_or_else(|| uid.to_string())
}

/// First buffer for `getpwuid_r` when sysconf suggests no size.
const PW_BUF_FALLBACK: usize = 1024;
/// Largest buffer offered to `getpwuid_r`: far above any real passwd entry, so an answer that
/// still does not fit is given up rather than grown without bound.
const PW_BUF_MAX: usize = 1 << 20;

/// The name of user `uid` from the passwd database, or `None` if there is no such user, the
/// lookup failed, or the entry does not fit in `max` bytes. The buffer starts at `start` bytes
/// (capped at `max`) and doubles on `ERANGE`.
///
/// `getpwuid_r`, not `getpwuid`: the latter returns static storage that any other lookup in the
/// process (a log drain, a library) may overwrite.
fn user_name(uid: libc::uid_t, start: usize, max: usize) -> Option<String> {
    let mut len = start.clamp(1, max);
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        // SAFETY: getpwuid_r writes into `pwd` and `buf` (whose length we pass) and sets
        // `result` to `&pwd` on success or null if there is no such user. The strings in `pwd`
        // point into `buf`, which outlives their use below.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            match rc {
                0 if !result.is_null() && !pwd.pw_name.is_null() => {
                    return Some(CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned());
                }
                libc::EINTR => {}
                libc::ERANGE if len < max => len = len.saturating_mul(2).min(max),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_refuses_unknown_names() {
        let root = lookup("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            lookup("no-such-user-here", None),
            Err(DaemonError::NoSuchAccount { kind: "user", .. })
        ));
        assert!(matches!(
            lookup("root", Some("no-such-group-here")),
            Err(DaemonError::NoSuchAccount { kind: "group", .. })
        ));
    }

    #[test]
    fn user_name_grows_its_buffer_up_to_the_cap() {
        // A one-byte buffer is too small for any entry: found only by growing on ERANGE.
        assert_eq!(user_name(0, 1, PW_BUF_MAX).as_deref(), Some("root"));
        assert_eq!(user_name(0, 0, PW_BUF_MAX).as_deref(), Some("root"));
        // root's entry ("root", "x", "/root", a shell) never fits in 8 bytes: given up.
        assert_eq!(user_name(0, 1, 8), None);
        assert_eq!(user_name(4_000_000_123, 1024, PW_BUF_MAX), None, "no such user");
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(current_user(), user_name(me, 1, PW_BUF_MAX).unwrap_or(me.to_string()));
    }

    #[test]
    fn an_unlocked_pid_file_passes_the_check() {
        let p = std::env::temp_dir().join(format!("chatd-pid-{}", std::process::id()));
        std::fs::write(&p, "1\n").unwrap();
        assert!(check_pid_file(&p).is_ok());
        std::fs::remove_file(&p).unwrap();
        assert!(check_pid_file(&p).is_ok(), "a missing file is fine");
    }
}
