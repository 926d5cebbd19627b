//! The systemd notify protocol (`sd_notify(3)`): state datagrams (`READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`) sent to the unix datagram socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), and the watchdog timeout from
//! `WATCHDOG_USEC`. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest `STATUS=` text sent; longer texts are cut (the journal shows it in `systemctl status`).
const STATUS_BYTES_MAX: usize = 512;
/// Shortest watchdog timeout honoured: below it pings would flood the manager.
const WATCHDOG_TIMEOUT_MIN: Duration = Duration::from_millis(20);

/// Sends state changes to the service manager.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`; `Ok(None)` when the variable is unset or empty (not run by
    /// a service manager that wants notifications).
    pub fn from_env() -> Result<Option<Notifier>, String> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                Notifier::new(v.as_bytes()).map(Some)
            }
        }
    }

    /// A notifier for the socket named `name`: a file system path, or `@name` (abstract).
    pub fn new(name: &[u8]) -> Result<Notifier, String> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let fail = |e: io::Error| format!("NOTIFY_SOCKET {shown:?}: {e}");
        let addr = match name.split_first() {
            Some((b'@', abstract_name)) => {
                SocketAddr::from_abstract_name(abstract_name).map_err(fail)?
            }
            Some((b'/', _)) => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name)).map_err(fail)?
            }
            _ => {
                let why = "only absolute paths and @abstract names are supported";
                return Err(format!("NOTIFY_SOCKET {shown:?}: {why}"));
            }
        };
        let socket = UnixDatagram::unbound().map_err(fail)?;
        Ok(Notifier { socket, addr })
    }

    /// Send one state datagram, e.g. `"READY=1\nSTATUS=serving"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let n = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if n != state.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }

    /// Startup finished: listeners bound, pools running.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", status_text(status)))
    }

    /// A reload begins (followed by [`Notifier::ready`] when it is over, applied or not).
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ))
    }

    /// Shutdown begins.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\nSTATUS=draining requests")
    }

    /// The watchdog keep-alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }
}

/// One line of at most [`STATUS_BYTES_MAX`] bytes (a newline would start another assignment).
fn status_text(status: &str) -> String {
    let mut out: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > STATUS_BYTES_MAX {
        let mut cut = STATUS_BYTES_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// The watchdog timeout the manager expects pings within: `WATCHDOG_USEC`, when set and meant for
/// this process (`WATCHDOG_PID` unset or equal to our pid).
pub fn watchdog_timeout() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid_ok = match std::env::var("WATCHDOG_PID") {
        Err(_) => true,
        Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
    };
    parse_watchdog(&usec, pid_ok)
}

fn parse_watchdog(usec: &str, pid_ok: bool) -> Option<Duration> {
    let usec: u64 = usec.trim().parse().ok()?;
    let timeout = Duration::from_micros(usec);
    (pid_ok && timeout >= WATCHDOG_TIMEOUT_MIN).then_some(timeout)
}

/// `CLOCK_MONOTONIC` in microseconds (what `MONOTONIC_USEC=` carries).
pub fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime writes into a valid, zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("dis-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(path.to_str().unwrap().as_bytes()).unwrap();
        n.ready("serving").unwrap();
        let mut buf = [0u8; 1024];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
        let _ = std::fs::remove_file(&path);

        let name = format!("dis-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(format!("@{name}").as_bytes()).unwrap();
        n.reloading().unwrap();
        let len = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
    }

    #[test]
    fn rejects_relative_names() {
        assert!(Notifier::new(b"relative/notify.sock").is_err());
        assert!(Notifier::new(b"").is_err());
    }

    #[test]
    fn watchdog_timeout_parsing() {
        assert_eq!(
            parse_watchdog("30000000", true),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog("30000000", false), None);
        assert_eq!(parse_watchdog("0", true), None);
        assert_eq!(parse_watchdog("soon", true), None);
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_text("a\nb"), "a b");
        assert_eq!(status_text(&"é".repeat(400)).len(), STATUS_BYTES_MAX);
    }
}
