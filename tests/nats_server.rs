//! A real `nats-server` (the Debian package `nats-server`, which `.ci/run` installs) for
//! the bridge tests: JetStream on, a free loopback port, its store in the fixture's
//! directory, killed with the fixture.
//!
//! A missing `nats-server` fails the test with a message saying to install it: CI
//! installs it, so nothing is skipped silently.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::daemons::{free_tcp_port, http_get};
use crate::fixture::{Fixture, Proc, wait_until};

/// Where Debian installs the server, and the name on `PATH` otherwise.
const CANDIDATES: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// The `nats-server` binary; panics (failing the test) when it is not installed.
#[track_caller]
pub fn binary() -> PathBuf {
    if let Some(found) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return found;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.is_file()));
    on_path.unwrap_or_else(|| {
        panic!("nats-server is not installed: `apt-get install nats-server` (CI's .ci/run installs it); the bridge tests need a real server")
    })
}

/// One JetStream server on `127.0.0.1:port`, alone or a node of a [`NatsCluster`].
pub struct NatsServer {
    /// Its client port.
    pub port: u16,
    /// Its name (`n0`, `n1`, ... in a cluster).
    pub name: String,
    /// Its monitoring port (`/jsz`).
    pub http_port: u16,
    store: PathBuf,
    /// In a cluster: its route port and the routes to the others.
    cluster: Option<(u16, String)>,
    proc: Option<Proc>,
}

impl NatsServer {
    /// Starts a server with JetStream, its store in the fixture's directory, and waits
    /// until it accepts connections.
    #[track_caller]
    pub fn start(fx: &Fixture) -> NatsServer {
        let mut server = NatsServer::new(fx, "n0", None);
        server.restart(fx);
        server
    }

    fn new(fx: &Fixture, name: &str, cluster: Option<(u16, String)>) -> NatsServer {
        NatsServer {
            port: free_tcp_port(),
            name: name.to_owned(),
            http_port: free_tcp_port(),
            store: fx.path(&format!("nats-store-{name}")),
            cluster,
            proc: None,
        }
    }

    /// The URL the daemons' `[nats] servers` list takes.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same ports and store).
    #[track_caller]
    pub fn restart(&mut self, fx: &Fixture) {
        let mut command = Command::new(binary());
        command
            .args(["--jetstream", "--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--name", &self.name, "--http_port", &self.http_port.to_string(), "--store_dir"])
            .arg(&self.store);
        if let Some((route_port, routes)) = &self.cluster {
            command.args([
                "--cluster_name",
                "shmring",
                "--cluster",
                &format!("nats://127.0.0.1:{route_port}"),
                "--routes",
                routes,
            ]);
        }
        let proc = fx.spawn("nats-server", &mut command);
        let port = self.port;
        wait_until(Duration::from_secs(10), "nats-server accepts connections", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.proc = Some(proc);
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self, fx: &Fixture) {
        if let Some(proc) = self.proc.take() {
            fx.kill(&proc);
        }
    }

    /// The name of the leader of `stream` as this server's `/jsz` reports it (`None`
    /// when it knows none, or does not answer).
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let response = std::panic::catch_unwind(|| http_get(addr, "/jsz?accounts=true&streams=true")).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        let jsz: serde_json::Value = serde_json::from_str(body).ok()?;
        let accounts = jsz["account_details"].as_array()?;
        accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == stream)
            .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned))
    }
}

/// Three JetStream servers routed to each other on loopback (cluster `shmring`), for
/// streams with `replicas = 3`.
pub struct NatsCluster {
    /// The nodes, `n0` to `n2`.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until each accepts connections.
    #[track_caller]
    pub fn start(fx: &Fixture) -> NatsCluster {
        let route_ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                let others: Vec<&str> = (0..3).filter(|&j| j != i).map(|j| routes[j].as_str()).collect();
                NatsServer::new(fx, &format!("n{i}"), Some((route_ports[i], others.join(","))))
            })
            .collect();
        for node in &mut nodes {
            node.restart(fx);
        }
        NatsCluster { nodes }
    }

    /// The client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The index among `nodes` of the one that leads `stream`, as the running nodes
    /// report it.
    pub fn leader_of(nodes: &[NatsServer], stream: &str) -> Option<usize> {
        let name = nodes.iter().filter(|n| n.proc.is_some()).find_map(|n| n.stream_leader(stream))?;
        nodes.iter().position(|n| n.name == name)
    }
}

/// Every message of `stream`, read directly from the server at `url` (an ordered
/// consumer of its own): `(stream sequence, generator sequence number of the payload)`,
/// in stream order (`None`: a payload that is no generator record). For a failed bridge
/// run, this says whether the records it lost reached the stream.
pub fn read_stream(url: &str, stream: &str) -> Result<Vec<(u64, Option<u64>)>, String> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let mut handle = js.get_stream(stream).await.map_err(|e| format!("stream {stream}: {e}"))?;
        let total = handle.info().await.map_err(|e| format!("stream info: {e}"))?.state.messages;
        let consumer = handle
            .create_consumer(OrderedConfig::default())
            .await
            .map_err(|e| format!("an ordered consumer of {stream}: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("pulling {stream}: {e}"))?;
        let mut found = Vec::with_capacity(total as usize);
        while (found.len() as u64) < total {
            let message = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(format!("reading {stream}: {e}")),
                Ok(None) | Err(_) => {
                    return Err(format!("{stream}: {} of its {total} messages came", found.len()));
                }
            };
            let sequence = message.info().map_err(|e| format!("message metadata: {e}"))?.stream_sequence;
            found.push((sequence, crate::daemons::generator_seq(&message.payload)));
        }
        Ok(found)
    })
}

/// Takes up to `count` messages from the durable pull consumer `consumer` of `stream`
/// (on the server at `url`) and drops them unacknowledged: to the consumer's puller
/// these deliveries are lost on their way, as with a node that dies holding them. The
/// server delivers them again only after the consumer's `ack_wait`. Returns the stream
/// sequences taken.
pub fn take_deliveries(url: &str, stream: &str, consumer: &str, count: usize) -> Result<Vec<u64>, String> {
    use async_nats::jetstream::consumer::PullConsumer;
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| format!("connect {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let handle = js.get_stream(stream).await.map_err(|e| format!("stream {stream}: {e}"))?;
        let puller: PullConsumer =
            handle.get_consumer(consumer).await.map_err(|e| format!("consumer {consumer}: {e}"))?;
        let mut messages = puller
            .fetch()
            .max_messages(count)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| format!("pulling from {consumer}: {e}"))?;
        let mut taken = Vec::with_capacity(count);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| format!("pulling from {consumer}: {e}"))?;
            taken.push(message.info().map_err(|e| format!("message metadata: {e}"))?.stream_sequence);
        }
        Ok(taken)
    })
}
