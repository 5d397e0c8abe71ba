//! The `wshub` server binary. Run `wshub --help` for the flags.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use wshub::server::{Server, ServerConfig, TokenAuth};
use wshub::{ChannelPattern, Hub, HubConfig, RateLimit, RedisConfig, SlowConsumerPolicy};

/// `(identity, token)` pairs for the WebSocket endpoint.
type Tokens = Vec<(String, String)>;

/// Everything the command line configures.
struct Args {
    hub: HubConfig,
    server: ServerConfig,
    tokens: Tokens,
    redis: Option<RedisConfig>,
    /// Runtime worker threads (`None`: the CPUs this process may use).
    threads: Option<usize>,
}

const HELP: &str = "\
wshub — WebSocket broadcast hub (go-ws compatible)

USAGE: wshub [OPTIONS]

  --listen ADDR               address to listen on [default: 127.0.0.1:8080]
  --api-key KEY               require `Authorization: Bearer KEY` on /api/* and /metrics; without
                              a key they answer only requests to an IP address or localhost
                              [env: WSHUB_API_KEY]
  --client-publish PATTERN    let clients publish to PATTERN: a channel name, or a prefix
                              ending in `*` such as `chat:*` (repeatable) [default: none]
  --heartbeat SECS            ping interval [default: 30]
  --pong-timeout SECS         disconnect a client silent for this long [default: 60]
  --write-timeout SECS        disconnect a client whose socket takes nothing for this long [default: 10]
  --write-delay MS            hold each connection's writes back this long so that one
                              writev carries more frames: less CPU, more latency [default: 0]
  --max-message-size BYTES    largest inbound message [default: 65536]
  --max-queued-bytes BYTES    per-client outbound queue bound [default: 1048576]
  --max-queued-frames N       per-client outbound queue bound in frames [default: 16384]
  --slow-consumer POLICY      `disconnect` (close 1008) or `drop` [default: disconnect]
  --max-subscriptions N       channels per client [default: 1024]
  --max-channel-name-len N    longest channel name, in characters [default: 256]
  --max-body-size BYTES       largest HTTP API request body [default: 1048576]
  --shutdown-timeout SECS     grace period for clients on SIGINT/SIGTERM [default: 10]
  --threads N                 runtime worker threads; 1 runs everything on one thread, the
                              cheapest per message on one core [default: the CPUs this
                              process may use]

History and recovery:
  --history PATTERN           keep a history on matching channels (repeatable; same syntax as
                              --client-publish): publications carry offset and epoch, and a
                              subscribe carrying offset and epoch resumes after that offset
  --history-size N            publications kept per channel [default: 1000]
  --history-ttl SECS          how long publications are kept [default: 300]

Scaling out (several wshub nodes, one set of channels):
  --redis URL                 use Redis pub/sub between nodes, e.g. redis://127.0.0.1:6379;
                              repeat to shard channels over several Redis instances (every node
                              must list the same URLs in the same order) [default: none]
  --redis-prefix PREFIX       prefix of the Redis channel names [default: wshub:]

Security:
  --auth-token ID=TOKEN       require a client token on /ws (repeatable); the token may come as
                              `Authorization: Bearer`, `?token=`, `?access_token=` or cookie
                              `wshub_token` (same-origin or allowed origins only); ID is the
                              client's identity [env: WSHUB_AUTH_TOKENS=ID=TOKEN,...]
  --allowed-origin ORIGIN     accept browser connections (and API calls) only from ORIGIN, e.g.
                              https://app.example.com or https://*.example.com (repeatable)
                              [default: any origin on /ws; only this server's own on the API]
  --max-connections N         concurrent WebSocket clients [default: 65536]
  --rate-limit N              messages per second per client, 0 = no limit [default: 100]
  --rate-burst N              messages a client may send in a burst [default: 200]
  --handshake-timeout SECS    time to send a complete HTTP request head (and an API body) [default: 10]
  --max-http-connections N    connections in the HTTP phase at once; more are closed [default: 1024]
  --max-header-size BYTES     largest HTTP request head, at least 8192 [default: 16384]
  --tls-cert PATH             serve TLS (wss://, https://) with this PEM certificate chain;
                              needs --tls-key [default: plain TCP]
  --tls-key PATH              the unencrypted PEM private key of --tls-cert (PKCS#8, PKCS#1
                              or SEC1)
  -h, --help                  print this help
  -V, --version               print the version

Endpoints: GET /ws (WebSocket), POST /api/publish, POST /api/broadcast, GET /api/stats,
GET /api/history, GET /metrics (Prometheus), GET /healthz.
";

fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Args {
        hub: hub_config,
        server: server_config,
        tokens,
        redis,
        threads,
    } = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wshub: {e}\nTry `wshub --help`.");
            return ExitCode::from(2);
        }
    };
    let mut builder = Hub::builder().config(hub_config);
    if !tokens.is_empty() {
        let auth = TokenAuth::new(tokens);
        builder = builder.authenticate(move |req| auth.check(req));
    }
    if let Some(redis) = redis {
        #[cfg(feature = "redis")]
        {
            builder = builder.redis(redis);
        }
        #[cfg(not(feature = "redis"))]
        {
            eprintln!("wshub: --redis {redis:?} needs a build with the `redis` feature");
            return ExitCode::from(2);
        }
    }
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wshub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let hub = match builder.connect().await {
            Ok(hub) => hub,
            Err(e @ wshub::Error::Config(_)) => {
                eprintln!("wshub: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("wshub: {e}");
                return ExitCode::FAILURE;
            }
        };
        let tls = server_config.tls.is_some();
        let server = match Server::bind(hub, server_config).await {
            Ok(s) => s,
            // A setting out of range, like the hub's.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                eprintln!("wshub: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("wshub: cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        let scheme = if tls { "wss" } else { "ws" };
        tracing::info!("wshub listening on {scheme}://{}/ws", server.local_addr());
        match server.run(shutdown_signal()).await {
            Ok(report) => {
                tracing::info!(
                    "shut down: {} clients closed, {} forced",
                    report.clients,
                    report.forced
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wshub: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

/// Parses the command line; `Ok(None)` when `--help`/`--version` was printed.
#[allow(clippy::print_stdout, reason = "--help and --version print to stdout")]
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut hub = HubConfig::default();
    let mut server = ServerConfig::default();
    server.api_key = std::env::var("WSHUB_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let mut tokens = Tokens::new();
    if let Ok(list) = std::env::var("WSHUB_AUTH_TOKENS") {
        for pair in list.split(',').filter(|p| !p.is_empty()) {
            tokens.push(id_token("WSHUB_AUTH_TOKENS", pair)?);
        }
    }
    let (mut rate, mut burst) = (100u32, None);
    let (mut redis_urls, mut redis_prefix) = (Vec::new(), None);
    let mut threads = None;
    let (mut tls_cert, mut tls_key) = (None::<String>, None::<String>);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if matches!(flag.as_str(), "-h" | "--help") {
            print!("{HELP}");
            return Ok(None);
        }
        if matches!(flag.as_str(), "-V" | "--version") {
            println!("wshub {}", env!("CARGO_PKG_VERSION"));
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                server.listen = v
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--api-key" => server.api_key = Some(value()?).filter(|k| !k.is_empty()),
            "--tls-cert" => tls_cert = Some(value()?),
            "--tls-key" => tls_key = Some(value()?),
            "--client-publish" => hub
                .client_publish
                .push(ChannelPattern::new(&value()?).map_err(|e| e.to_string())?),
            "--heartbeat" => hub.heartbeat_interval = secs(&flag, &value()?)?,
            "--pong-timeout" => hub.pong_timeout = secs(&flag, &value()?)?,
            "--write-timeout" => hub.write_timeout = secs(&flag, &value()?)?,
            "--write-delay" => hub.write_delay = millis(&flag, &value()?)?,
            "--max-message-size" => hub.max_message_size = number(&flag, &value()?)?,
            "--max-queued-bytes" => hub.max_queued_bytes = number(&flag, &value()?)?,
            "--max-queued-frames" => hub.max_queued_frames = number(&flag, &value()?)?,
            "--slow-consumer" => {
                hub.slow_consumer = value()?
                    .parse::<SlowConsumerPolicy>()
                    .map_err(|e| e.to_string())?;
            }
            "--max-subscriptions" => hub.max_subscriptions = number(&flag, &value()?)?,
            "--max-channel-name-len" => hub.max_channel_name_len = number(&flag, &value()?)?,
            "--max-body-size" => server.max_body_size = number(&flag, &value()?)?,
            "--shutdown-timeout" => server.shutdown_timeout = secs(&flag, &value()?)?,
            "--threads" => {
                let v = value()?;
                threads = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--threads {v}: expected at least 1"))?,
                );
            }
            "--auth-token" => tokens.push(id_token(&flag, &value()?)?),
            "--allowed-origin" => hub.allowed_origins.push(value()?),
            "--max-connections" => hub.max_connections = number(&flag, &value()?)?,
            "--rate-limit" => rate = number(&flag, &value()?)?,
            "--rate-burst" => burst = Some(number(&flag, &value()?)?),
            "--handshake-timeout" => server.handshake_timeout = secs(&flag, &value()?)?,
            "--max-http-connections" => {
                server.max_http_connections = number(&flag, &value()?)?;
            }
            "--max-header-size" => server.max_header_size = number(&flag, &value()?)?,
            "--redis" => redis_urls.push(value()?),
            "--history" => hub
                .history
                .push(ChannelPattern::new(&value()?).map_err(|e| e.to_string())?),
            "--history-size" => hub.history_size = number(&flag, &value()?)?,
            "--history-ttl" => hub.history_ttl = secs(&flag, &value()?)?,
            "--redis-prefix" => redis_prefix = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if rate == 0 && burst.is_some() {
        return Err("--rate-burst needs a rate limit (--rate-limit 0 turns it off)".to_owned());
    }
    hub.rate_limit = (rate > 0).then(|| RateLimit::new(rate, burst.unwrap_or(200)));
    server.tls = match (tls_cert, tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(
            wshub::server::tls_from_pem_files(cert.as_ref(), key.as_ref())
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
        ),
        _ => return Err("--tls-cert and --tls-key go together".to_owned()),
    };
    let redis = (!redis_urls.is_empty()).then(|| {
        let config = RedisConfig::new(redis_urls);
        match redis_prefix {
            Some(p) => config.prefix(p),
            None => config,
        }
    });
    Ok(Some(Args {
        hub,
        server,
        tokens,
        redis,
        threads,
    }))
}

/// The tokio runtime for `threads` workers (default: the CPUs this process may use, which
/// `taskset` and cgroup limits narrow). One worker gets the current-thread scheduler, which
/// made chat on one core about 10 % cheaper per delivery than the multi-thread scheduler with
/// one worker (`perf/README.md`, "Later changes").
fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build()
}

fn id_token(flag: &str, v: &str) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((id, token)) if !id.is_empty() && !token.is_empty() => {
            Ok((id.to_owned(), token.to_owned()))
        }
        _ => Err(format!("{flag}: expected ID=TOKEN")),
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag} {v}: expected a non-negative integer"))
}

fn secs(flag: &str, v: &str) -> Result<Duration, String> {
    duration(flag, v, "seconds", 1.0)
}

fn millis(flag: &str, v: &str) -> Result<Duration, String> {
    duration(flag, v, "milliseconds", 1e-3)
}

/// A non-negative number of `unit`s, each `scale` seconds.
fn duration(flag: &str, v: &str, unit: &str, scale: f64) -> Result<Duration, String> {
    let n: f64 = v
        .parse()
        .map_err(|_| format!("{flag} {v}: expected {unit}"))?;
    Duration::try_from_secs_f64(n * scale)
        .map_err(|_| format!("{flag} {v}: expected a non-negative number of {unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` (the environment variables are not set in the test process).
    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| (*s).to_owned())).map(|a| a.expect("not --help"))
    }

    #[test]
    fn no_flags_give_the_documented_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            format!("{:?}", args.hub),
            format!("{:?}", HubConfig::default())
        );
        assert_eq!(
            format!("{:?}", args.server),
            format!("{:?}", ServerConfig::default())
        );
        assert_eq!(args.hub.rate_limit, Some(RateLimit::new(100, 200)));
        assert!(args.tokens.is_empty() && args.redis.is_none() && args.threads.is_none());
    }

    #[test]
    fn every_flag_reaches_its_setting_in_both_spellings() {
        let args = parse(&[
            "--listen=127.0.0.1:9001",
            "--api-key",
            "k",
            "--client-publish",
            "chat:*",
            "--client-publish=news",
            "--heartbeat",
            "5",
            "--pong-timeout=7.5",
            "--write-timeout",
            "3",
            "--write-delay",
            "2",
            "--max-message-size",
            "1000",
            "--max-queued-bytes",
            "4096",
            "--max-queued-frames",
            "64",
            "--slow-consumer",
            "drop",
            "--max-subscriptions",
            "9",
            "--max-channel-name-len",
            "16",
            "--max-body-size",
            "2048",
            "--shutdown-timeout",
            "4",
            "--threads",
            "2",
            "--auth-token",
            "alice=s3cret",
            "--allowed-origin",
            "https://app.example.com",
            "--max-connections",
            "77",
            "--rate-limit",
            "10",
            "--rate-burst",
            "20",
            "--handshake-timeout",
            "6",
            "--max-http-connections",
            "12",
            "--max-header-size",
            "9000",
            "--redis",
            "redis://127.0.0.1:1",
            "--redis=redis://127.0.0.1:2",
            "--redis-prefix",
            "p:",
            "--history",
            "feed:*",
            "--history-size",
            "50",
            "--history-ttl",
            "60",
        ])
        .unwrap();
        let (hub, server) = (&args.hub, &args.server);
        assert_eq!(server.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(server.api_key.as_deref(), Some("k"));
        let patterns: Vec<String> = hub.client_publish.iter().map(|p| p.to_string()).collect();
        assert_eq!(patterns, ["chat:*", "news"]);
        assert_eq!(hub.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(hub.pong_timeout, Duration::from_millis(7500));
        assert_eq!(hub.write_timeout, Duration::from_secs(3));
        assert_eq!(hub.write_delay, Duration::from_millis(2));
        assert_eq!(hub.max_message_size, 1000);
        assert_eq!((hub.max_queued_bytes, hub.max_queued_frames), (4096, 64));
        assert_eq!(hub.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!((hub.max_subscriptions, hub.max_channel_name_len), (9, 16));
        assert_eq!(server.max_body_size, 2048);
        assert_eq!(server.shutdown_timeout, Duration::from_secs(4));
        assert_eq!(args.threads, Some(2));
        assert_eq!(args.tokens, [("alice".to_owned(), "s3cret".to_owned())]);
        assert_eq!(hub.allowed_origins, ["https://app.example.com"]);
        assert_eq!(hub.max_connections, 77);
        assert_eq!(hub.rate_limit, Some(RateLimit::new(10, 20)));
        assert_eq!(server.handshake_timeout, Duration::from_secs(6));
        assert_eq!(server.max_http_connections, 12);
        assert_eq!(server.max_header_size, 9000);
        let redis = args.redis.as_ref().unwrap();
        assert_eq!(redis.urls, ["redis://127.0.0.1:1", "redis://127.0.0.1:2"]);
        assert_eq!(redis.prefix, "p:");
        let history: Vec<String> = hub.history.iter().map(|p| p.to_string()).collect();
        assert_eq!(history, ["feed:*"]);
        assert_eq!(hub.history_size, 50);
        assert_eq!(hub.history_ttl, Duration::from_secs(60));
        // `--rate-limit 0` turns the limit off.
        assert_eq!(parse(&["--rate-limit", "0"]).unwrap().hub.rate_limit, None);
    }

    #[test]
    fn bad_command_lines_are_errors_that_name_the_flag() {
        for (args, expected) in [
            (&["--nope"][..], "unknown argument \"--nope\""),
            (&["--listen"], "--listen needs a value"),
            (&["--listen", "nowhere"], "--listen nowhere"),
            (&["--threads", "0"], "--threads 0: expected at least 1"),
            (&["--heartbeat", "-1"], "--heartbeat"),
            (&["--max-queued-bytes", "lots"], "--max-queued-bytes"),
            (&["--auth-token", "no-equals"], "--auth-token"),
            (&["--slow-consumer", "ignore"], "ignore"),
            (&["--client-publish", "bad name"], "bad name"),
            (
                &["--rate-limit", "0", "--rate-burst", "5"],
                "--rate-burst needs a rate limit",
            ),
            (
                &["--tls-cert", "c.pem"],
                "--tls-cert and --tls-key go together",
            ),
        ] {
            let error = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }
}
