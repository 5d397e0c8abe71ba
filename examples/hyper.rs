//! Mounting a wshub hub in a plain hyper 1.x server, next to your own routes.
//!
//! Run with: `cargo run --example hyper` and connect to ws://127.0.0.1:3000/ws; every second
//! the example publishes the time to channel `clock` (subscribe with
//! `{"type":"subscribe","channel":"clock"}`).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use wshub::{Hub, Json, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on ws://{}/ws", listener.local_addr()?);

    let clock = hub.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            tick.tick().await;
            let msg = Message::new("event").with_data(Json::from_serialize(&n).unwrap());
            let _ = clock.publish("clock", &msg).await;
        }
    });

    loop {
        let (tcp, _) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let hub = hub.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/ws" => hub.upgrade(&mut req),
                        _ => Response::new(Full::new(Bytes::from("hello from hyper\n"))),
                    })
                }
            });
            // The slowloris timeout and the request head limit are the HTTP server's job.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 << 10)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.with_upgrades().await {
                eprintln!("connection error: {e}");
            }
        });
    }
}
