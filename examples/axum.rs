//! Mounting a wshub hub in an axum router, with a publish route of your own.
//!
//! Run with: `cargo run --example axum`, connect to ws://127.0.0.1:3000/ws, subscribe with
//! `{"type":"subscribe","channel":"news"}`, then
//! `curl -X POST 127.0.0.1:3000/say -d 'hello'` publishes "hello" to channel `news`.

use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::Router;
use wshub::{Hub, Json, Message};

async fn ws(State(hub): State<Hub>, mut req: Request) -> axum::http::Response<wshub::Body> {
    hub.upgrade(&mut req)
}

async fn say(State(hub): State<Hub>, body: String) -> String {
    let msg = Message::new("event").with_data(Json::string(&body));
    match hub.publish("news", &msg).await {
        Ok(report) => format!("queued for {} clients\n", report.enqueued),
        Err(e) => format!("not published: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new();
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/say", post(say))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on ws://{}/ws", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            hub.shutdown(std::time::Duration::from_secs(5)).await;
        })
        .await?;
    Ok(())
}
