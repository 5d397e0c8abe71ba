//! Results: one [`Phase`] per measured phase, printed as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Publish → receive latency, microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Deliveries recorded in the measured window.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Messages that did not arrive, over the whole phase (warm-up and drain included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    /// Deliveries expected: the sum over published messages of their (reading) recipients.
    pub expected: u64,
    /// Deliveries received by reading clients.
    pub received: u64,
    /// `expected - received` (0 when more arrived than expected).
    pub lost: u64,
    /// `lost / expected`.
    pub lost_ratio: f64,
    /// Fixed-rate sends skipped because the in-flight bound was reached (the offered rate was
    /// not sustained).
    pub skipped: u64,
    /// Messages still incomplete when their tracking slot was reused.
    pub stale: u64,
}

/// The server process over the measured window (present with `--pid`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    /// CPU seconds (user + system, all threads).
    pub cpu_s: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cpu_util: f64,
    /// CPU microseconds per delivered message.
    pub cpu_us_per_delivery: f64,
    /// VmRSS at the start of the window, KiB.
    pub rss_kib_start: u64,
    /// VmRSS at the end of the window, KiB.
    pub rss_kib_end: u64,
    /// Largest VmRSS sampled (every 100 ms) during the window, KiB.
    pub rss_kib_max: u64,
    /// Write-type syscalls (`syscw`, /proc/PID/io) in the window; send/sendmsg are not counted.
    pub syscw: u64,
    /// Read-type syscalls (`syscr`); recv/recvmsg are not counted.
    pub syscr: u64,
    /// `syscw` per delivered message.
    pub syscw_per_delivery: f64,
}

/// Another process observed over the measured window (`--watch NAME=PID`: another node, Redis).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Process {
    /// Name given on the command line.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system, all threads).
    pub cpu_s: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cpu_util: f64,
    /// CPU microseconds per delivered message.
    pub cpu_us_per_delivery: f64,
    /// User CPU seconds alone.
    pub user_s: f64,
    /// VmRSS at the end of the window, KiB.
    pub rss_kib_end: u64,
}

/// The load generator's own core.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loadgen {
    /// CPU seconds per wall second of the load generator (one thread: 1.0 = saturated).
    pub cpu_util: f64,
    /// Whether the load generator's core was (nearly) saturated: the figures may then be
    /// limited by the load generator rather than the server.
    pub saturated: bool,
    /// User CPU time of *other* processes on the machine during the window, in cores
    /// (machine user time minus the server's and the load generator's). Above 0.05 the
    /// machine was not quiet and the figures are disturbed.
    pub other_user_cpu: f64,
}

/// Idle-connection memory (scenario `idle`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// Connections held open.
    pub connections: usize,
    /// Server VmRSS before the connections were opened, KiB.
    pub rss_kib_before: u64,
    /// Server VmRSS with all connections open and settled, KiB.
    pub rss_kib_after: u64,
    /// `(after - before) / connections`, bytes.
    pub bytes_per_connection: f64,
}

/// One measured phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Scenario name (`chat`, `fanout`, `idle`, `slow`, `hot`).
    pub scenario: String,
    /// Phase name (e.g. `1x10000` and `10x1000` for `hot`).
    pub phase: String,
    /// Free-form label from `--label` (e.g. the server's name).
    pub label: String,
    /// Subscribing clients.
    pub clients: usize,
    /// Publishing clients.
    pub publishers: usize,
    /// Clients that never read (scenario `slow`).
    pub slow_clients: usize,
    /// Length of the `data` string of each message.
    pub size: usize,
    /// Offered publish rate (messages/s, all publishers), or `max`.
    pub rate: String,
    /// In-flight bound per publisher (messages).
    pub window: u32,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Messages published in the window.
    pub published: u64,
    /// Messages published per second in the window.
    pub publishes_per_s: f64,
    /// Messages received by reading clients in the window.
    pub delivered: u64,
    /// Deliveries per second in the window.
    pub deliveries_per_s: f64,
    /// Publish → receive latency.
    pub latency_us: Latency,
    /// Loss over the phase.
    pub loss: Loss,
    /// Server figures (with `--pid`).
    pub server: Option<Server>,
    /// Other observed processes (with `--watch`).
    pub processes: Vec<Process>,
    /// The load generator's own core.
    pub loadgen: Loadgen,
    /// Idle-connection memory (scenario `idle`).
    pub idle: Option<Idle>,
    /// Error frames received (`{"type":"error",...}`) and protocol problems.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Connections the server closed or lost during the phase.
    pub closed: u64,
    /// TCP segments the machine sent per delivered message in the window (`/proc/net/snmp`
    /// OutSegs: every data write is at least one segment on loopback; includes ACKs and the
    /// load generator's sends, so compare servers under the same load).
    pub tcp_segments_per_delivery: f64,
}

/// Renders phases as a fixed-width table.
pub fn table(phases: &[Phase]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "scenario/phase",
        "deliv/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "lost",
        "srv cpu",
        "µs/deliv",
        "rss MiB",
        "syscw/dlv",
        "KiB/conn",
        "lg cpu"
    );
    for p in phases {
        let name = if p.label.is_empty() {
            format!("{}/{}", p.scenario, p.phase)
        } else {
            format!("{}:{}/{}", p.label, p.scenario, p.phase)
        };
        let (cpu, us, rss, sysc) = match &p.server {
            Some(s) => (
                format!("{:.0}%", s.cpu_util * 100.0),
                format!("{:.3}", s.cpu_us_per_delivery),
                format!("{:.1}", s.rss_kib_max as f64 / 1024.0),
                format!("{:.3}", s.syscw_per_delivery),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let per_conn = p.idle.as_ref().map_or_else(
            || "-".into(),
            |i| format!("{:.2}", i.bytes_per_connection / 1024.0),
        );
        let _ =
            writeln!(
            out,
            "{:<22} {:>12} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7.0}%{}",
            name,
            human(p.deliveries_per_s),
            p.latency_us.p50,
            p.latency_us.p99,
            p.latency_us.p999,
            p.loss.lost,
            cpu,
            us,
            rss,
            sysc,
            per_conn,
            p.loadgen.cpu_util * 100.0,
            if p.loadgen.saturated { " SATURATED" } else { "" }
        );
        for w in &p.processes {
            let _ = writeln!(
                out,
                "  {:<20} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
                w.name,
                "",
                "",
                "",
                "",
                "",
                format!("{:.0}%", w.cpu_util * 100.0),
                format!("{:.3}", w.cpu_us_per_delivery),
                format!("{:.1}", w.rss_kib_end as f64 / 1024.0),
            );
        }
    }
    for p in phases {
        if p.errors > 0 || p.loss.skipped > 0 || p.loss.stale > 0 || p.closed > 0 {
            let _ = writeln!(
                out,
                "note {}/{}: {} errors (first: {}), {} skipped sends (offered rate not sustained), {} stale, {} connections closed",
                p.scenario,
                p.phase,
                p.errors,
                p.first_error.as_deref().unwrap_or("-"),
                p.loss.skipped,
                p.loss.stale,
                p.closed
            );
        }
        if p.loadgen.other_user_cpu > 0.05 {
            let _ = writeln!(
                out,
                "note {}/{}: the machine was not quiet: other processes used {:.2} cores during the window",
                p.scenario, p.phase, p.loadgen.other_user_cpu
            );
        }
        if p.loadgen.saturated {
            let _ = writeln!(
                out,
                "note {}/{}: the load generator's core was saturated ({:.0}%): throughput may be limited by it, not by the server",
                p.scenario,
                p.phase,
                p.loadgen.cpu_util * 100.0
            );
        }
    }
    out
}

/// `1234567.0` → `1.23M`.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_phase_and_flags_saturation() {
        let p = Phase {
            scenario: "chat".into(),
            phase: "max".into(),
            deliveries_per_s: 2.5e6,
            loadgen: Loadgen {
                cpu_util: 0.97,
                saturated: true,
                other_user_cpu: 0.5,
            },
            ..Phase::default()
        };
        let t = table(&[p]);
        assert!(t.contains("chat/max"));
        assert!(t.contains("2.50M"));
        assert!(t.contains("SATURATED"));
        assert!(t.contains("not quiet"));
        assert_eq!(human(1500.0), "1.5k");
    }

    #[test]
    fn watched_processes_get_a_row_under_their_phase() {
        let p = Phase {
            scenario: "relay".into(),
            phase: "max".into(),
            processes: vec![Process {
                name: "redis-1".into(),
                cpu_util: 0.42,
                cpu_us_per_delivery: 1.25,
                rss_kib_end: 2048,
                ..Process::default()
            }],
            ..Phase::default()
        };
        let t = table(&[p]);
        let rows: Vec<&str> = t.lines().collect();
        assert!(rows[1].starts_with("relay/max"), "{t}");
        assert!(rows[2].contains("redis-1"), "{t}");
        assert!(rows[2].contains("42%") && rows[2].contains("1.250") && rows[2].contains("2.0"));
    }
}
