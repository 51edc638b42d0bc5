//! What the kernel says about the server under load: CPU time and RSS of a process, and the
//! kernel's own memory for sockets, read from /proc.
use std::fs;

/// A process's CPU time so far, in seconds: `utime + stime` of /proc/PID/stat (clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields are counted after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the paren, field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// A process's resident set in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The kernel's memory that grows with connections: TCP socket buffers (`mem` pages of
/// /proc/net/sockstat) and the slab (`Slab` of /proc/meminfo), both in KiB. Machine-wide, so
/// they count the client's sockets as well as the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMem {
    pub tcp_kib: u64,
    pub slab_kib: u64,
}

pub fn kernel_mem() -> KernelMem {
    let tcp_pages = fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut it = line.split_ascii_whitespace();
            while let Some(w) = it.next() {
                if w == "mem" {
                    return it.next()?.parse::<u64>().ok();
                }
            }
            None
        })
        .unwrap_or(0);
    let slab_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    KernelMem { tcp_kib: tcp_pages * page / 1024, slab_kib }
}

/// CPU time used by the whole machine so far (every CPU's busy ticks of /proc/stat), and by
/// this process (/proc/self/stat), in seconds. Their difference from the server's time over a
/// window is the load that did not come from the benchmark: noise on a shared machine.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> =
        line.split_ascii_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let busy: u64 =
        v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / hz)
}

pub fn self_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Time a process's main thread has spent waiting on a run queue (ready to run, not running)
/// so far, in seconds: the second field of /proc/PID/schedstat. On a shared machine this is
/// the direct sign that something else took the server's core.
pub fn runqueue_wait_seconds(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let ns: u64 = s.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// The same for every thread of this process (the generator), summed.
pub fn self_runqueue_wait_seconds() -> Option<f64> {
    let mut total = 0.0;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let s = fs::read_to_string(task.path().join("schedstat")).ok()?;
        let ns: u64 = s.split_ascii_whitespace().nth(1)?.parse().ok()?;
        total += ns as f64 / 1e9;
    }
    Some(total)
}
