//! # wshub
//!
//! A WebSocket broadcast hub for tokio: clients subscribe to named channels, the application
//! publishes to a channel or broadcasts to everyone, and wshub delivers each message to many
//! clients at once — encoded and framed once, shared by reference with every recipient, written
//! in batches with vectored writes, and never held up by a slow client.
//!
//! wshub speaks the JSON protocol of the Go library go-ws byte for byte, so go-ws clients work
//! unchanged, and it fixes go-ws's weak points: strict RFC 6455, explicit slow-consumer policy,
//! validated configuration, graceful shutdown, contained hook panics.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
//! use hyper_util::rt::TokioIo;
//! use wshub::{Hub, Json, Message};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let hub = Hub::new();
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!
//!     // Publish from anywhere in the application; it never waits for a client.
//!     let publisher = hub.clone();
//!     tokio::spawn(async move {
//!         let msg = Message::new("event").with_data(Json::string("hello"));
//!         let report = publisher.publish("news", &msg).await.unwrap();
//!         eprintln!("queued for {} clients", report.enqueued);
//!     });
//!
//!     loop {
//!         let (tcp, _) = listener.accept().await?;
//!         let hub = hub.clone();
//!         tokio::spawn(async move {
//!             let service = service_fn(move |mut req: Request<Incoming>| {
//!                 let hub = hub.clone();
//!                 async move { Ok::<_, Infallible>(hub.upgrade(&mut req)) }
//!             });
//!             let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
//!             let _ = conn.with_upgrades().await;
//!         });
//!     }
//! }
//! ```
//!
//! # Feature flags
//! - `server` (default): the `wshub` binary's HTTP server ([`server`]): routing, the HTTP
//!   publish API, signal handling, TLS (rustls with ring). The library core ([`Hub`], [`Hub::upgrade`]) needs no
//!   feature.
//! - `client` (default): [`ReconnectingClient`] ([`client`]), a WebSocket client for wshub and
//!   go-ws servers that reconnects with backoff, resubscribes, keeps the connection alive and
//!   speaks `ws://` and `wss://` (rustls).
//! - `redis` (default): the Redis broker ([`RedisConfig`], [`HubBuilder::redis`]) that lets
//!   several wshub nodes share their channels, with the history kept in Redis.
//!
//! # Slow subscribers
//! Every client has a queue bounded in bytes ([`HubConfig::max_queued_bytes`], 1 MiB) and in
//! frames ([`HubConfig::max_queued_frames`]). When a publish finds it full, the hub applies
//! [`HubConfig::slow_consumer`]: [`SlowConsumerPolicy::Disconnect`] (default) abandons the
//! client's queue and closes it with 1008 "slow consumer"; [`SlowConsumerPolicy::Drop`] skips
//! the message for that client and later tells it `"dropped N messages"`. Either way the
//! [`PublishReport`] says exactly who got the message, and other clients are unaffected.
//! Control frames (ping, pong, close) are never refused by the bound, but they do count
//! towards it (at most 16 pongs wait at a time, so a ping flood cannot grow the queue).
//!
//! # Cancel safety
//! [`Hub::publish`] and [`Hub::broadcast`] deliver in their first poll; dropping them later
//! has no effect. Dropping a [`Hub::serve`] future drops that connection.
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod broker;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
mod config;
mod error;
pub mod frame;
mod http;
mod hub;
#[doc(hidden)]
pub mod internals;
mod message;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
mod session;

pub use broker::{BrokerCounters, ClusterStats, RedisConfig};
pub use bytes::Bytes;
#[cfg(feature = "client")]
pub use client::{ClientBuilder, ClientConfig, ReconnectingClient};
pub use config::{
    ChannelPattern, HubConfig, RateLimit, SlowConsumerPolicy, MAX_DURATION, MAX_HISTORY_TTL,
};
pub use error::{
    ChannelNameError, ConfigError, Error, PublishError, Result, SendError, SubscribeError,
};
pub use http::{Body, Handshake};
pub use hub::{
    ChannelAction, Client, Counters, History, HistoryError, Hub, HubBuilder, IncomingMessage,
    PublishReport, ShutdownReport, Stats,
};
pub use message::channel::ChannelName;
pub use message::json::{JsonError, JsonErrorKind};
pub use message::{Json, Message};
pub use session::DisconnectReason;

/// The README's Rust examples, compiled by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
