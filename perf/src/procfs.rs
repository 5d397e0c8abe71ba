//! Process figures from `/proc`: CPU time (`stat`), resident memory (`status`) and syscall
//! counts (`io`).

use std::fs;

/// Clock ticks per second for `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
pub const CLK_TCK: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds over the process's life (all threads).
    pub cpu_s: f64,
    /// User CPU seconds alone.
    pub user_s: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Read-type syscalls (`syscr`: read, readv, ...; not recv/recvmsg).
    pub syscr: u64,
    /// Write-type syscalls (`syscw`: write, writev, ...; not send/sendmsg).
    pub syscw: u64,
}

/// Reads `/proc/<pid>/{stat,status,io}`, or `/proc/self/...` for `None`. Fields that cannot be
/// read are zero (`io` needs the same user or root).
pub fn sample(pid: Option<u32>) -> Option<Sample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    let (user_s, cpu_s) = parse_stat_cpu(&stat)?;
    let status = fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let io = fs::read_to_string(format!("{dir}/io")).unwrap_or_default();
    Some(Sample {
        cpu_s,
        user_s,
        rss_kib: field(&status, "VmRSS:").unwrap_or(0),
        syscr: field(&io, "syscr:").unwrap_or(0),
        syscw: field(&io, "syscw:").unwrap_or(0),
    })
}

/// `(user, user + system)` seconds from a `/proc/PID/stat` line (fields 14 and 15, counted
/// after the parenthesised command name, which may contain spaces).
pub fn parse_stat_cpu(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime as f64 / CLK_TCK, (utime + stime) as f64 / CLK_TCK))
}

/// User CPU seconds (user + nice) of the whole machine, all cores, from `/proc/stat`.
pub fn machine_user_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut f = line.split_ascii_whitespace().skip(1);
    let user: u64 = f.next()?.parse().ok()?;
    let nice: u64 = f.next()?.parse().ok()?;
    Some((user + nice) as f64 / CLK_TCK)
}

/// TCP segments sent by the whole machine (`Tcp: OutSegs` in `/proc/net/snmp`). On loopback
/// every `write`/`send` that carries data is at least one segment, whatever syscall made it, so
/// its delta per delivery compares servers that use different write calls (ACKs and the load
/// generator's own sends are included: compare servers under the same load).
pub fn tcp_out_segments() -> Option<u64> {
    let snmp = fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names
        .split_ascii_whitespace()
        .position(|n| n == "OutSegs")?;
    values.split_ascii_whitespace().nth(i)?.parse().ok()
}

/// The first number after `key` in a `key: value` file.
fn field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "1234 (tokio runtime) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(line), Some((2.5, 3.0)));
    }

    #[test]
    fn reads_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(machine_user_s().unwrap() > 0.0);
        assert!(tcp_out_segments().is_some());
        assert_eq!(field("VmRSS:\t  1024 kB\n", "VmRSS:"), Some(1024));
    }
}
