//! A minimal Prometheus text endpoint (`GET` anything on the listen address).
//!
//! The body is rendered on each request from the segment's counters and the daemon's
//! own; nothing is cached, so a scrape always sees the live values.
//!
//! Under abuse it stays cheap: at most [`MAX_CONNECTIONS`] are served at once (the rest
//! wait in the listen backlog, holding no descriptor of ours); an `accept` that fails
//! (`EMFILE`, `ENFILE`, `ENOBUFS`) backs off for [`ACCEPT_BACKOFF`] instead of spinning;
//! a request is read up to the end of its head (at most [`MAX_REQUEST`] bytes, `431`
//! beyond) before the answer, so a long request is answered, not reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shm_core::StatsSnapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::warn;

/// Renders the metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The largest request head read.
pub const MAX_REQUEST: usize = 16 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `render()` to every connection until the runtime stops.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!("metrics endpoint: accept failed ({e}); backing off");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            answer(stream, &render).await;
            drop(slot);
        });
    }
}

/// Reads the request head, answers it, and closes.
async fn answer(mut stream: TcpStream, render: &Render) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    // Until the end of the head, the client's end of input, an error, too many bytes, or
    // the timeout: a client that sent only part of a request is answered all the same.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() <= MAX_REQUEST {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let (status, body) = if request.len() > MAX_REQUEST {
        ("431 Request Header Fields Too Large", String::new())
    } else {
        ("200 OK", render())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The segment's counters as Prometheus lines, labelled with the segment.
pub fn segment_lines(segment: &str, stats: &StatsSnapshot) -> String {
    let mut out = String::new();
    let label = segment.replace('\\', "\\\\").replace('"', "\\\"");
    for c in &stats.counters {
        out.push_str(&format!(
            "# TYPE shmring_{} counter\nshmring_{}{{segment=\"{label}\"}} {}\n",
            c.label, c.label, c.value
        ));
    }
    for (name, value) in [
        ("used_bytes", stats.used_bytes),
        ("capacity_bytes", stats.capacity),
        ("records_in_flight", stats.records_in_flight),
    ] {
        out.push_str(&format!("# TYPE shmring_{name} gauge\nshmring_{name}{{segment=\"{label}\"}} {value}\n"));
    }
    out
}

/// One daemon counter as a Prometheus line.
pub fn daemon_line(daemon: &str, name: &str, value: u64) -> String {
    format!("# TYPE {daemon}_{name} counter\n{daemon}_{name} {value}\n")
}
