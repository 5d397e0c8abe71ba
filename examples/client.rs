//! A reconnecting client: subscribes to channels on a wshub (or go-ws) server and prints every
//! message it receives as one JSON line on stdout; status lines go to stderr. It reconnects
//! and subscribes again whenever the server goes away and comes back. On channels with
//! history (`wshub --history PATTERN`) it resumes where it stopped: the publications it missed
//! are printed after a "recovered" status line, or a "not recovered" line says they are lost.
//!
//! Run with: `cargo run --release --example client -- ws://127.0.0.1:8080/ws CHANNEL...`
//!
//! Set `WSHUB_TOKEN` to send `Authorization: Bearer $WSHUB_TOKEN` with the upgrade request.
//! Stop with Ctrl-C.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wshub::client::{ClientConfig, Event, ReconnectingClient};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: client ws://HOST:PORT/ws CHANNEL...");
        return ExitCode::from(2);
    };
    let channels: Vec<String> = args.collect();

    let mut config = ClientConfig::default().max_backoff(Duration::from_secs(5));
    if let Ok(token) = std::env::var("WSHUB_TOKEN") {
        config = config.header("Authorization", format!("Bearer {token}"));
    }
    let stop = CancellationToken::new();
    let (client, mut events) = match ReconnectingClient::builder()
        .config(config)
        .cancellation_token(stop.clone())
        .connect(&url)
    {
        Ok(started) => started,
        Err(e) => {
            eprintln!("client: {e}");
            return ExitCode::from(2);
        }
    };
    for channel in &channels {
        if let Err(e) = client.subscribe(channel) {
            eprintln!("client: {channel:?}: {e}");
            return ExitCode::from(2);
        }
    }
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });

    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(message) => {
                let Some(text) = message.text() else {
                    eprintln!(
                        "client: skipped a binary message of {} bytes",
                        message.payload().len()
                    );
                    continue;
                };
                // Every text message is JSON: the client's `require_json` (on by default)
                // refuses anything else.
                if writeln!(stdout, "{text}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // stdout closed (e.g. piped into `head`): stop quietly.
                    client.close();
                }
            }
            Event::Connected => eprintln!("client: connected to {url}, subscribed to {channels:?}"),
            Event::Reconnected { attempt } => {
                eprintln!("client: reconnected after {attempt} dial(s), subscriptions restored");
            }
            Event::Recovered {
                channel,
                epoch,
                offset,
            } => eprintln!(
                "client: {channel}: recovered, missed publications after offset {offset} \
                 (epoch {epoch}) follow"
            ),
            Event::NotRecovered {
                channel,
                epoch,
                offset,
            } => eprintln!(
                "client: {channel}: not recovered, publications were missed; continuing \
                 after offset {offset} (epoch {epoch})"
            ),
            Event::Disconnected(why) => eprintln!("client: disconnected: {why}"),
            Event::ConnectFailed {
                error,
                retry_in: Some(delay),
                ..
            } => {
                eprintln!("client: {error}; retrying in {delay:?}");
            }
            Event::ConnectFailed {
                error,
                retry_in: None,
                ..
            } => eprintln!("client: {error}; giving up"),
            other => eprintln!("client: {other:?}"),
        }
    }
    match client.closed().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}
