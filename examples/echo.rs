//! An echo server on the wshub library: every text and binary message goes back to its sender
//! unchanged. The Autobahn|TestSuite conformance run uses it.
//!
//! Run with: `cargo run --release --example echo -- 127.0.0.1:9001`

use std::net::SocketAddr;

use wshub::server::{Server, ServerConfig};
use wshub::{Hub, HubConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned())
        .parse()?;
    let config = HubConfig::default()
        .raw_messages(true)
        // Autobahn sends messages up to 16 MiB and expects them echoed in one piece.
        .max_message_size(64 << 20)
        .max_queued_bytes(128 << 20)
        // The suite sends thousands of frames as fast as it can.
        .rate_limit(None);
    let hub = Hub::builder()
        .config(config)
        .on_message(|client, msg| {
            let _ = if msg.is_binary() {
                client.send_binary(msg.payload())
            } else {
                client.send_text(msg.text().unwrap_or_default())
            };
        })
        .build()?;
    let server = Server::bind(hub, ServerConfig::default().listen(addr)).await?;
    eprintln!("echo server on ws://{}/ws", server.local_addr());
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
