//! A local HTTP/1.1 server that plays scripted replies, one per connection,
//! and records the requests it got: enough to speak each provider's real
//! wire format (status, headers, chunked server-sent events, delays, a
//! connection dropped mid-stream) without the network.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `200` with `text/event-stream`; each event after its delay.
    Events {
        /// (delay before, raw text of the event including the blank line).
        events: Vec<(Duration, String)>,
        /// Close the connection before the end of the body.
        drop_before_end: bool,
    },
    /// An error status with a body and extra headers.
    Status {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Accept the request and say nothing for this long.
    Silence(Duration),
}

impl Reply {
    /// Events sent at once, ending normally.
    pub fn events(events: Vec<String>) -> Reply {
        Reply::Events { events: events.into_iter().map(|e| (Duration::ZERO, e)).collect(), drop_before_end: false }
    }

    /// An error status with a JSON body.
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Status { status, body: body.to_string(), headers: vec![] }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request line target (path and query).
    pub target: String,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body, parsed as JSON.
    pub body: serde_json::Value,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The running server.
pub struct MockServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl MockServer {
    /// Starts a server that answers connection *n* with `replies[n]`
    /// (and with the last reply once they run out).
    pub async fn start(replies: Vec<Reply>) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let reply = replies.get(n).or(replies.last()).cloned().unwrap();
                n += 1;
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, reply, recorded).await;
                });
            }
        });
        MockServer { url, requests }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(mut socket: TcpStream, reply: Reply, recorded: Arc<Mutex<Vec<Recorded>>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let target = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))).collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while buf.len() < header_end + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[header_end..]).unwrap_or(serde_json::Value::Null);
    recorded.lock().unwrap().push(Recorded { target, headers, body });

    match reply {
        Reply::Silence(d) => {
            tokio::time::sleep(d).await;
        }
        Reply::Status { status, body, headers } => {
            let mut head = format!(
                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (n, v) in headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(body.as_bytes()).await?;
        }
        Reply::Events { events, drop_before_end } => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                .await?;
            for (delay, event) in events {
                tokio::time::sleep(delay).await;
                socket.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await?;
                socket.flush().await?;
            }
            if !drop_before_end {
                socket.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
    socket.shutdown().await
}
