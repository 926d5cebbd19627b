//! What the benchmark reads about another process from /proc: CPU time (user + system, all
//! threads, from `/proc/PID/stat`, with its child processes' for a server that works in child
//! processes such as nginx) and memory (`VmRSS`, and `VmHWM`, the peak resident set).

use std::time::Duration;

/// User plus system CPU time of every thread of `pid`, alive or exited, and of its live child
/// processes (nginx's workers under its master; the gateway has none).
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let mut ticks =
        parse_stat_cpu_ticks(&stat).ok_or_else(|| format!("malformed /proc/{pid}/stat"))?;
    ticks += children_cpu_ticks(pid);
    Ok(ticks_to_duration(ticks))
}

/// utime + stime of the live processes whose parent is `pid` (a scan of /proc: a child that
/// exits between the scan and the read of its stat is skipped).
fn children_cpu_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if child == pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if parse_stat_ppid(&stat) == Some(pid) {
            ticks += parse_stat_cpu_ticks(&stat).unwrap_or(0);
        }
    }
    ticks
}

/// The parent's pid (field 4) of a `/proc/PID/stat` line.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// The fields of a `/proc/PID/stat` line from field 3 (state) on, counted after the command
/// name's last `)` (the name may hold spaces and parentheses).
fn stat_fields(stat: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_ascii_whitespace())
}

/// Resident memory of `pid`, KiB: (current `VmRSS`, peak `VmHWM`).
pub fn memory_kb(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    match (
        status_field_kb(&status, "VmRSS:"),
        status_field_kb(&status, "VmHWM:"),
    ) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(format!("no VmRSS/VmHWM in /proc/{pid}/status")),
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat_fields(stat)?;
    // The fields start at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_field_kb(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "1234 (deep int) shield)) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_ppid(stat), Some(1));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn counts_the_cpu_of_child_processes() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        // A child that spins for about 0.5 s (600,000 rounds of a shell loop), then sleeps.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        let after = cpu_time(me).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let spent = after.saturating_sub(before);
        assert!(
            spent >= Duration::from_millis(300),
            "children's CPU not counted: {spent:?}"
        );
    }

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field_kb(status, "VmRSS:"), Some(10240));
        assert_eq!(status_field_kb(status, "VmHWM:"), Some(20480));
        assert_eq!(status_field_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_time(me).is_ok());
        let (rss, hwm) = memory_kb(me).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
