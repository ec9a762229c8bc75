//! A minimal Prometheus text endpoint (`GET` anything on the listen address).
//!
//! The body is rendered on each request from the segment's counters and the daemon's
//! own; nothing is cached, so a scrape always sees the live values.

use std::net::SocketAddr;
use std::sync::Arc;

use shm_core::StatsSnapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders the metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `render()` to every connection until the runtime stops.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buf)).await;
            let body = render();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
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
