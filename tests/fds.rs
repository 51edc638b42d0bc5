//! Running out of file descriptors: chatd stops accepting for a moment, does not spin on the
//! ready listener, serves the connections it has, and accepts again once descriptors free up.
mod util;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    time::Duration,
};

use util::{eventually, Server, TIMEOUT};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `GET /healthz` on a new connection, the whole answer; `None` if the connection or the read
/// fails (each bounded: a connect to a full listen queue could otherwise hang for minutes).
fn get_healthz(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    let server = Server::start_with("", |cmd| {
        // SAFETY: setrlimit is async-signal-safe and only touches the child.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: 32, rlim_max: 32 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let addr = server.addr();

    // Hold connections open until chatd can accept no more: the kernel still completes the
    // handshakes, so the surplus waits in the listen queue.
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect"));
    }
    eventually("the EMFILE warning in the log", || {
        server.stderr().contains("cannot accept, pausing")
    });

    // While starved, the loop must idle: a spin on the ready listener would burn a whole second.
    // The second is a measuring window, not a wait for something to happen.
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(server.pid()) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(spent * 4 < hz, "chatd used {spent} ticks of {hz} in one starved second: it spins");

    // Descriptors come back: the queued connections and new ones are served.
    held.clear();
    let mut answer = None;
    eventually("chatd to recover and answer /healthz", || {
        answer = get_healthz(addr).filter(|a| a.starts_with("HTTP/1.1 200"));
        answer.is_some()
    });
    let answer = answer.unwrap();
    assert!(answer.ends_with("ok\n"), "{answer}");
    let log = server.stderr();
    assert_eq!(
        log.matches("cannot accept, pausing").count(),
        1,
        "the warning is rate-limited:\n{log}"
    );
}
