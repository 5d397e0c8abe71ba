//! Peer: the hub a Rust user writes first with tokio-tungstenite, after the crate's own
//! `examples/server.rs` chat server: a task per connection, an unbounded mpsc per client whose
//! receiver is `forward`ed into the socket, a `Mutex<HashMap>` of channels, and a `Message`
//! clone per recipient.
//!
//! It speaks the subset of wshub's JSON protocol the load generator uses:
//! `{"type":"subscribe","channel":C}` (or `"data":C`), `{"type":"unsubscribe",...}`,
//! `{"type":"ping"}` → `{"type":"pong","timestamp":T}`, and
//! `{"type":"publish","channel":C,"data":D}` → `{"type":"event","channel":C,"data":D,"timestamp":T}`
//! to every subscriber of C (the sender too).
//!
//! Usage: `peer-tungstenite [ADDR]` (default 127.0.0.1:8082; loopback only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_util::{future, pin_mut, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Tx = UnboundedSender<Message>;

#[derive(Default)]
struct Hub {
    /// channel → (client id → sender)
    channels: HashMap<String, HashMap<u64, Tx>>,
}

type Shared = Arc<Mutex<Hub>>;

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    timestamp: String,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn reply(kind: &str, channel: Option<&str>, data: Option<&RawValue>) -> Message {
    let text = serde_json::to_string(&Outgoing {
        kind,
        channel,
        data,
        timestamp: now(),
    })
    .unwrap_or_default();
    Message::text(text)
}

fn handle_text(hub: &Shared, id: u64, tx: &Tx, text: &str) {
    let msg: Incoming<'_> = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            let err = serde_json::value::to_raw_value(&format!("invalid message: {e}")).ok();
            let _ = tx.unbounded_send(reply("error", None, err.as_deref()));
            return;
        }
    };
    let channel = msg.channel.clone().or_else(|| {
        msg.data
            .and_then(|d| serde_json::from_str::<String>(d.get()).ok())
    });
    match (msg.kind, channel) {
        ("subscribe", Some(c)) => {
            hub.lock()
                .unwrap()
                .channels
                .entry(c)
                .or_default()
                .insert(id, tx.clone());
        }
        ("unsubscribe", Some(c)) => {
            let mut hub = hub.lock().unwrap();
            if let Some(members) = hub.channels.get_mut(&c) {
                members.remove(&id);
                if members.is_empty() {
                    hub.channels.remove(&c);
                }
            }
        }
        ("ping", _) => {
            let _ = tx.unbounded_send(reply("pong", None, None));
        }
        ("publish", Some(c)) => {
            let event = reply("event", Some(&c), msg.data);
            let hub = hub.lock().unwrap();
            if let Some(members) = hub.channels.get(&c) {
                for peer in members.values() {
                    let _ = peer.unbounded_send(event.clone());
                }
            }
        }
        (kind, _) => {
            let err =
                serde_json::value::to_raw_value(&format!("unsupported message type {kind:?}")).ok();
            let _ = tx.unbounded_send(reply("error", None, err.as_deref()));
        }
    }
}

async fn handle_connection(hub: Shared, id: u64, raw: TcpStream) {
    let _ = raw.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(raw).await else {
        return;
    };
    let (tx, rx) = unbounded();
    let (outgoing, incoming) = ws.split();
    let handle_incoming = incoming.try_for_each(|msg| {
        if let Message::Text(text) = &msg {
            handle_text(&hub, id, &tx, text.as_str());
        }
        future::ok(())
    });
    let receive_from_others = rx.map(Ok).forward(outgoing);
    pin_mut!(handle_incoming, receive_from_others);
    future::select(handle_incoming, receive_from_others).await;
    let mut hub = hub.lock().unwrap();
    hub.channels.retain(|_, members| {
        members.remove(&id);
        !members.is_empty()
    });
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".to_owned())
        .parse()
        .expect("usage: peer-tungstenite [ADDR]");
    assert!(addr.ip().is_loopback(), "loopback addresses only");
    let listener = TcpListener::bind(addr).await.expect("bind");
    eprintln!("peer-tungstenite listening on ws://{addr}/ws");
    let hub = Shared::default();
    let next = AtomicU64::new(1);
    while let Ok((stream, _)) = listener.accept().await {
        let id = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(handle_connection(hub.clone(), id, stream));
    }
}
