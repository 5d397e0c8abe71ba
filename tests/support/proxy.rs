//! A minimal HTTP `CONNECT` proxy for the client's proxy tests.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A minimal HTTP `CONNECT` proxy: records each request head, answers with `answer` (a status
/// line such as "200 Connection established"), and on 2xx relays bytes both ways.
pub struct TestProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    pub async fn start(answer: &'static str) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let head = read_head(&mut client).await;
                    seen.lock().unwrap().push(head.clone());
                    let resp = format!("HTTP/1.1 {answer}\r\n\r\n");
                    client.write_all(resp.as_bytes()).await.unwrap();
                    if !answer.starts_with('2') {
                        return;
                    }
                    let dest = head.split(' ').nth(1).unwrap().to_owned();
                    let mut upstream = TcpStream::connect(dest).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        TestProxy {
            url: format!("http://{addr}"),
            heads,
        }
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Reads up to the end of a request head, byte by byte (nothing past it is consumed).
async fn read_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(sock.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}
