//! `loadgen`: WebSocket hub load generator (127.0.0.1 only). See `perf/README.md`.
//!
//! ```text
//! loadgen chat   --clients 32  --rate max --pid $(pidof wshub)
//! loadgen fanout --clients 256 --rate 7812 --json
//! loadgen idle   --clients 10000 --pid PID
//! loadgen slow   --clients 1000 --slow-percent 1 --rate 2000 --size 1024 --pid PID
//! loadgen hot    --clients 10000 --channels 10 --rate 200 --pid PID
//! loadgen relay  --url ws://127.0.0.1:8081/ws --sub-url ws://127.0.0.1:8082/ws \
//!                --clients 1000 --channels 1000 --publishers 4 --watch redis=PID
//! ```

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use perf::load::{self, ConnSpec, PhaseSpec, PubSpec, Rate, Shared, Target, HEADER_DIGITS};
use perf::procfs;
use perf::report::{self, Idle, Loadgen, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N clients subscribe to one room and each publishes; every message goes to all N.
    Chat,
    /// One publishing client, N subscribers of one channel.
    Fanout,
    /// N idle subscribed connections; reports server memory per connection.
    Idle,
    /// Like fanout, with --slow-percent of the subscribers never reading.
    Slow,
    /// One channel with N subscribers, then the same subscribers over --channels channels.
    Hot,
    /// --publishers clients on --url publish round robin over --channels channels whose N
    /// subscribers are on --sub-url: with a broker between two nodes, every delivery crosses it.
    Relay,
}

/// WebSocket hub load generator: 127.0.0.1 only, one thread, bounded in time.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Where the subscribers connect (another node of the same cluster) [default: --url].
    /// In `chat`, the clients alternate between --url and --sub-url; in the other scenarios the
    /// publisher stays on --url.
    #[arg(long)]
    sub_url: Option<String>,
    /// relay: publishing clients (on --url), each over its share of the channels.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Another process to report CPU per delivery for, as NAME=PID (repeatable), e.g. a second
    /// node or redis-server.
    #[arg(long, value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Subscribing clients (chat: every client also publishes).
    #[arg(long, short = 'n', default_value_t = 32)]
    clients: usize,
    /// Length of each message's `data` string, bytes (at least 40: the timestamp header).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Publishes per second over all publishers, or `max` (closed loop bounded by --inflight).
    #[arg(long, default_value = "max")]
    rate: String,
    /// In-flight bound per publisher, messages [default: chat 16, others 64; at a fixed rate,
    /// 200 ms worth of the publisher's messages, at least 16].
    #[arg(long)]
    inflight: Option<u32>,
    /// Closed loop: publish when this many messages of room are free [default: inflight/2].
    #[arg(long)]
    batch: Option<u32>,
    /// Measured seconds (per phase).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before measuring (per phase).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Longest wait, seconds, for outstanding messages after publishing stops.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Server process id: CPU, RSS and syscalls from /proc/PID.
    #[arg(long)]
    pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Label for the results (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Channel name (chat, fanout, idle, slow).
    #[arg(long, default_value = "room")]
    channel: String,
    /// slow: percentage of subscribers that never read.
    #[arg(long, default_value_t = 1.0)]
    slow_percent: f64,
    /// hot: number of channels in the spread phase; relay: number of channels (subscriber i
    /// joins channel i mod channels).
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// idle: seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Concurrent handshakes while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Read buffer per reading connection, bytes [default: 64 KiB, 8 KiB above 1000 clients].
    #[arg(long)]
    read_buffer: Option<usize>,
}

#[allow(clippy::print_stdout, reason = "the results go to stdout")]
fn main() -> ExitCode {
    let args = Args::parse();
    let (targets, rate) = match validate(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let needed = args.clients as u64 + 256;
    match rlimit::increase_nofile_limit(needed) {
        Ok(n) if n < needed => {
            eprintln!(
                "loadgen: open-file limit is {n}, {needed} needed for {} clients",
                args.clients
            );
            return ExitCode::from(2);
        }
        Ok(_) => {}
        Err(e) => eprintln!("loadgen: cannot raise the open-file limit: {e}"),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let phases_expected = if args.scenario == Scenario::Hot {
        2.0
    } else {
        1.0
    };
    // Every phase is bounded; this bounds the whole run, set-up included.
    let limit = Duration::from_secs_f64(
        phases_expected * (args.warmup + args.duration + args.drain) + args.settle + 120.0,
    );
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        tokio::time::timeout(limit, run(&args, &targets, rate)).await
    });
    let phases = match result {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("loadgen: the run exceeded its time bound ({limit:?})");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let doc = serde_json::json!({ "scenario": scenario_name(args.scenario), "phases": phases });
        println!("{doc}");
    } else {
        print!("{}", report::table(&phases));
    }
    // Do not wait for the server to finish closing 10k sockets.
    drop(local);
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Chat => "chat",
        Scenario::Fanout => "fanout",
        Scenario::Idle => "idle",
        Scenario::Slow => "slow",
        Scenario::Hot => "hot",
        Scenario::Relay => "relay",
    }
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("PID {pid:?}: {e}"))?;
    if name.is_empty() {
        return Err("expected NAME=PID".into());
    }
    Ok((name.to_owned(), pid))
}

fn parse_target(url: &str, flag: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{flag} must start with ws://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| format!("{flag} {url}: {e} (use an IP address and port)"))?;
    let loopback = match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !loopback {
        return Err(format!(
            "{flag} must point at a loopback address (127.0.0.0/8 or ::1)"
        ));
    }
    Ok(Target {
        addr,
        path: path.to_owned(),
    })
}

fn validate(args: &Args) -> Result<(Vec<Target>, Rate), String> {
    let mut targets = vec![parse_target(&args.url, "--url")?];
    if let Some(url) = &args.sub_url {
        targets.push(parse_target(url, "--sub-url")?);
    }
    if args.clients == 0 || args.clients > 19_000 {
        return Err("--clients must be 1..=19000 (the machine allows 20,000 open files)".into());
    }
    if args.size < HEADER_DIGITS {
        return Err(format!("--size must be at least {HEADER_DIGITS}"));
    }
    for (name, v, max) in [
        ("--duration", args.duration, 600.0),
        ("--warmup", args.warmup, 600.0),
        ("--drain", args.drain, 60.0),
        ("--settle", args.settle, 60.0),
    ] {
        if !(v.is_finite() && v >= 0.0 && v <= max) {
            return Err(format!("{name} must be between 0 and {max} seconds"));
        }
    }
    if args.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    if !(0.0..=100.0).contains(&args.slow_percent) {
        return Err("--slow-percent must be 0..=100".into());
    }
    if args.channels == 0 || args.channels > args.clients {
        return Err("--channels must be 1..=clients".into());
    }
    if args.scenario == Scenario::Relay && (args.publishers == 0 || args.publishers > args.channels)
    {
        return Err("--publishers must be 1..=channels".into());
    }
    let rate = if args.rate == "max" {
        Rate::Max
    } else {
        let r: f64 = args
            .rate
            .parse()
            .map_err(|_| format!("--rate {}: a number or `max`", args.rate))?;
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be positive".into());
        }
        Rate::Fixed(r)
    };
    Ok((targets, rate))
}

async fn run(args: &Args, targets: &[Target], rate: Rate) -> Result<Vec<Phase>, String> {
    let n = args.clients;
    let read_buffer = args
        .read_buffer
        .unwrap_or(if n > 1000 { 8 << 10 } else { 64 << 10 });
    let publishers = match args.scenario {
        Scenario::Chat => n,
        Scenario::Relay => args.publishers,
        _ => 1,
    };
    // Subscribers go to the last target: --sub-url when given, else --url.
    let subs_at = targets.len() - 1;
    let window = args.inflight.unwrap_or(match (rate, args.scenario) {
        // At a fixed rate, at most 200 ms of a publisher's messages may be in flight: a server
        // that falls further behind does not sustain the offered load, and the sends that do
        // not fit are skipped and reported.
        (Rate::Fixed(r), _) => ((r / publishers as f64 * 0.2).ceil() as u32).max(16),
        (Rate::Max, Scenario::Chat) => 16,
        (Rate::Max, _) => 64,
    });
    let batch = args.batch.unwrap_or((window / 2).max(1));
    let sub = |channels: Vec<String>| ConnSpec {
        target: subs_at,
        subscribe: channels,
        small_rcvbuf: false,
        read_buffer,
    };
    let base = |phase: &str, publishers: Vec<PubSpec>, readers: Vec<usize>| PhaseSpec {
        scenario: scenario_name(args.scenario).to_owned(),
        phase: phase.to_owned(),
        label: args.label.clone(),
        publishers,
        readers,
        clients: n,
        slow_clients: 0,
        rate,
        window,
        batch,
        size: args.size,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain: Duration::from_secs_f64(args.drain),
        server_pid: args.pid,
        watch: args.watch.clone(),
    };
    let room = args.channel.clone();
    let publisher_conn = ConnSpec {
        target: 0,
        subscribe: Vec::new(),
        small_rcvbuf: false,
        read_buffer: 16 << 10,
    };
    let rate_name = match rate {
        Rate::Max => "max".to_owned(),
        Rate::Fixed(r) => format!("{}/s", report::human(r)),
    };

    let sh = Rc::new(Shared::new());
    let (specs, phases): (Vec<ConnSpec>, Vec<PhaseSpec>) = match args.scenario {
        Scenario::Chat => {
            // With --sub-url, half of the room is on each node.
            let specs = (0..n)
                .map(|i| ConnSpec {
                    target: i % targets.len(),
                    ..sub(vec![room.clone()])
                })
                .collect();
            let pubs = (0..n)
                .map(|i| PubSpec {
                    conn: i,
                    channels: vec![(room.clone(), n as u32)],
                    reads_events: true,
                })
                .collect();
            (specs, vec![base(&rate_name, pubs, Vec::new())])
        }
        Scenario::Fanout | Scenario::Slow => {
            let slow = if args.scenario == Scenario::Slow {
                ((n as f64 * args.slow_percent / 100.0).ceil() as usize).min(n)
            } else {
                0
            };
            let healthy = n - slow;
            let mut specs = vec![publisher_conn];
            specs.extend((0..n).map(|i| ConnSpec {
                small_rcvbuf: i >= healthy,
                read_buffer: if i >= healthy { 64 } else { read_buffer },
                ..sub(vec![room.clone()])
            }));
            let pubs = vec![PubSpec {
                conn: 0,
                channels: vec![(room.clone(), healthy as u32)],
                reads_events: false,
            }];
            let mut phase = base(&rate_name, pubs, (1..=healthy).collect());
            phase.slow_clients = slow;
            if slow > 0 {
                phase.phase = format!("{rate_name},{slow} slow");
            }
            (specs, vec![phase])
        }
        Scenario::Hot => {
            let k = args.channels;
            let mut specs = vec![publisher_conn];
            specs.extend((0..n).map(|i| sub(vec!["hot".to_owned(), format!("c{}", i % k)])));
            let mut counts = vec![0u32; k];
            for i in 0..n {
                counts[i % k] += 1;
            }
            let readers: Vec<usize> = (1..=n).collect();
            let one = base(
                &format!("1x{n}"),
                vec![PubSpec {
                    conn: 0,
                    channels: vec![("hot".to_owned(), n as u32)],
                    reads_events: false,
                }],
                readers.clone(),
            );
            let mut spread = base(
                &format!("{k}x{}", n / k),
                vec![PubSpec {
                    conn: 0,
                    channels: (0..k).map(|c| (format!("c{c}"), counts[c])).collect(),
                    reads_events: false,
                }],
                readers,
            );
            // The same deliveries per second and in flight: k times the messages, each to 1/k.
            spread.rate = match rate {
                Rate::Fixed(r) => Rate::Fixed(r * k as f64),
                Rate::Max => Rate::Max,
            };
            spread.window = window * k as u32;
            spread.batch = batch * k as u32;
            (specs, vec![one, spread])
        }
        Scenario::Relay => {
            let k = args.channels;
            let p = args.publishers;
            let mut specs = vec![publisher_conn; p];
            specs.extend((0..n).map(|i| sub(vec![format!("{}{}", room, i % k)])));
            let mut counts = vec![0u32; k];
            for i in 0..n {
                counts[i % k] += 1;
            }
            let pubs = (0..p)
                .map(|j| PubSpec {
                    conn: j,
                    channels: (j..k)
                        .step_by(p)
                        .map(|c| (format!("{room}{c}"), counts[c]))
                        .collect(),
                    reads_events: false,
                })
                .collect();
            let mut phase = base(&rate_name, pubs, (p..p + n).collect());
            phase.phase = format!("{rate_name},{p}x{k}ch");
            (specs, vec![phase])
        }
        Scenario::Idle => {
            let specs = (0..n)
                .map(|_| ConnSpec {
                    read_buffer: 64,
                    ..sub(vec![room.clone()])
                })
                .collect();
            (specs, Vec::new())
        }
    };

    let before = args.pid.and_then(|p| procfs::sample(Some(p)));
    let setup_timeout = Duration::from_secs(60);
    let conns = load::open(targets, &specs, args.connect_concurrency, setup_timeout).await?;
    let conns: Vec<Rc<RefCell<Option<load::Conn>>>> = conns
        .into_iter()
        .map(|c| Rc::new(RefCell::new(Some(c))))
        .collect();

    if args.scenario == Scenario::Idle {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let after = args.pid.and_then(|p| procfs::sample(Some(p)));
        let mut phase = Phase {
            scenario: "idle".to_owned(),
            phase: format!("{n} conns"),
            label: args.label.clone(),
            clients: n,
            ..Phase::default()
        };
        phase.loadgen = Loadgen::default();
        if let (Some(b), Some(a)) = (before, after) {
            phase.idle = Some(Idle {
                connections: n,
                rss_kib_before: b.rss_kib,
                rss_kib_after: a.rss_kib,
                bytes_per_connection: (a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / n as f64,
            });
            phase.server = Some(report::Server {
                rss_kib_start: b.rss_kib,
                rss_kib_end: a.rss_kib,
                rss_kib_max: a.rss_kib,
                ..report::Server::default()
            });
        }
        drop(conns);
        return Ok(vec![phase]);
    }

    let mut results = Vec::new();
    for spec in &phases {
        results.push(load::run_phase(&sh, &conns, spec).await);
    }
    Ok(results)
}
