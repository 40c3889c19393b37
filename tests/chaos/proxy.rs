//! Fault-injecting TCP proxies, one per directed peer link: node `i` dials peer `j` through
//! proxy `(i, j)` (the nodes learn the map from `SESSIOND_TEST_PEER_DIAL`). A link passes
//! bytes, refuses connections (`Down`: existing ones are reset), swallows them (`Blackhole`:
//! existing connections stall, nothing is answered), or delays every chunk. Cutting only
//! `(i, j)` is a one-way partition: `i`'s requests to `j` are lost, `j` still reaches `i`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes pass.
    Up,
    /// Connections are refused; open ones are reset.
    Down,
    /// Connections are accepted and never answered; open ones stall.
    Blackhole,
    /// Bytes pass after this many milliseconds per chunk.
    Delay(u64),
}

/// The proxies of every directed link of one cluster.
pub struct Proxies {
    links: BTreeMap<(u64, u64), (String, watch::Sender<LinkMode>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxies {
    /// Starts a proxy for every ordered pair of `nodes` (id → the address it listens on).
    pub async fn start(nodes: &BTreeMap<u64, String>) -> Proxies {
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        for from in nodes.keys() {
            for (to, target) in nodes {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                let addr = listener.local_addr().expect("proxy address").to_string();
                let (mode, watched) = watch::channel(LinkMode::Up);
                tasks.push(tokio::spawn(serve(listener, target.clone(), watched)));
                links.insert((*from, *to), (addr, mode));
            }
        }
        Proxies { links, tasks }
    }

    /// The `SESSIOND_TEST_PEER_DIAL` value for node `from`: each peer's address mapped to
    /// the proxy of the link `from → peer`.
    pub fn dial_map(&self, from: u64, nodes: &BTreeMap<u64, String>) -> String {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|((_, to), (proxy, _))| format!("{}={proxy}", nodes[to]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets the link `from → to`.
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        if let Some((_, link)) = self.links.get(&(from, to)) {
            link.send_if_modified(|m| {
                let changed = *m != mode;
                *m = mode;
                changed
            });
        }
    }

    /// Sets both directions between every node of `a` and every node of `b`.
    pub fn split(&self, a: &[u64], b: &[u64], mode: LinkMode) {
        for x in a {
            for y in b {
                self.set(*x, *y, mode);
                self.set(*y, *x, mode);
            }
        }
    }

    /// Every link up.
    pub fn heal(&self) {
        for (_, link) in self.links.values() {
            link.send_if_modified(|m| {
                let changed = *m != LinkMode::Up;
                *m = LinkMode::Up;
                changed
            });
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, target: String, mode: watch::Receiver<LinkMode>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        connections.spawn(connection(inbound, target.clone(), mode.clone()));
        while connections.try_join_next().is_some() {}
    }
}

/// Carries one connection until the link's mode changes (then it is reset, or stalls until
/// the next change when the link turns into a black hole).
async fn connection(mut inbound: TcpStream, target: String, mut mode: watch::Receiver<LinkMode>) {
    let current = *mode.borrow_and_update();
    match current {
        LinkMode::Down => return,
        LinkMode::Blackhole => {
            let _ = mode.changed().await;
            return;
        }
        LinkMode::Up | LinkMode::Delay(_) => {}
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let delay = match current {
        LinkMode::Delay(ms) => Duration::from_millis(ms),
        _ => Duration::ZERO,
    };
    {
        let (mut in_read, mut in_write) = inbound.split();
        let (mut out_read, mut out_write) = outbound.split();
        let forward = pump(&mut in_read, &mut out_write, delay);
        let backward = pump(&mut out_read, &mut in_write, delay);
        tokio::select! {
            _ = async { tokio::join!(forward, backward) } => return,
            _ = mode.changed() => {}
        }
    }
    if *mode.borrow_and_update() == LinkMode::Blackhole {
        let _ = mode.changed().await;
    }
}

async fn pump<R, W>(read: &mut R, write: &mut W, delay: Duration)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
}
