//! The reconnecting client in tests: starting one and waiting for its next event.

use wshub::client::{ClientConfig, Event, Events, ReconnectingClient};

use super::WAIT;

/// Starts a client on `url` with `config`.
pub fn start(config: ClientConfig, url: &str) -> (ReconnectingClient, Events) {
    ReconnectingClient::builder()
        .config(config)
        .connect(url)
        .expect("valid client config")
}

/// The client's next event, within [`WAIT`].
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the event stream is open")
}
