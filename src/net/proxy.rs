//! A TCP relay with one toxic, Toxiproxy's model: a degraded link or a
//! faulty client path is a listener on the run's proxy address that the
//! run's nftables table redirects the link's new connections to (`dnat`),
//! relaying each to where it was going while it delays, throttles,
//! slices, truncates, resets or swallows the bytes.
//!
//! Transparent by address: the relay's upstream socket leaves from the
//! address the redirected connection came from (a node's own, or
//! 127.0.0.1), so the peer sees who is really talking and partition or
//! loss rules keyed on addresses still apply; it carries the firewall mark
//! `MARK`, which the redirect rules skip, so it is not redirected again.
//! Only the connections opened during one fault's hold are relayed.
//! Healing (`heal`) ends the toxic at once for every connection, queued
//! bytes included, stops listening, and keeps relaying the connections
//! still open, unchanged, until they end by themselves: a healed network
//! does not reset connections, and closing them would fail whatever
//! requests were in flight on them (a store's replication RPCs). Dropping
//! the proxy (the run's end) closes them all.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The firewall mark of the relay's own upstream sockets (`meta mark`).
pub const MARK: u32 = 0xfa17;
/// Largest chunk relayed at once.
const CHUNK: usize = 16 * 1024;
/// Chunks a delayed direction holds in flight: bounds its memory.
const DELAY_QUEUE: usize = 64;
/// Bound on connecting upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted peers remembered for confirmation probes.
const RECENT_PEERS: usize = 256;

/// What the relay does to the bytes. Directions: "up" is what the
/// connection's opener sends, "down" what it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "toxic", rename_all = "kebab-case")]
pub enum Toxic {
    /// Relays unchanged: the proxy's own cost, for the benchmark.
    None,
    /// Every chunk, both ways, waits `delay_ms` ± `jitter_ms` (order kept).
    Latency { delay_ms: u64, jitter_ms: u64 },
    /// Each direction at most this many bytes per second.
    Bandwidth { bytes_per_sec: u64 },
    /// Accepts and reads, never connects upstream, never answers.
    Blackhole,
    /// Relays the request; at the first byte of the answer, resets the
    /// opener's connection instead (the request reached the server, the
    /// client never learns what became of it).
    ResetPeer,
    /// Both ways in segments of about `bytes` (half to one and a half
    /// times), each sent alone (`TCP_NODELAY`).
    Slicer { bytes: usize },
    /// Closes the connection once `bytes` of answer were relayed.
    LimitData { bytes: u64 },
}

/// What one proxy saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub resets: AtomicU64,
    pub truncated: AtomicU64,
    /// Connections relayed now.
    pub open: AtomicU64,
    recent: Mutex<VecDeque<SocketAddrV4>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub upstream_failures: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub resets: u64,
    pub truncated: u64,
    pub open: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: g(&self.connections),
            upstream_failures: g(&self.upstream_failures),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            resets: g(&self.resets),
            truncated: g(&self.truncated),
            open: g(&self.open),
        }
    }

    /// Did the proxy accept a connection from `peer` (a probe's own
    /// address): the redirect is in place.
    pub fn accepted_from(&self, peer: SocketAddrV4) -> bool {
        self.recent.lock().unwrap().contains(&peer)
    }

    fn accepted(&self, peer: SocketAddrV4) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap();
        if r.len() == RECENT_PEERS {
            r.pop_front();
        }
        r.push_back(peer);
    }
}

/// A running proxy: one listener per upstream, one toxic for all.
#[derive(Debug)]
pub struct Proxy {
    listening: Vec<SocketAddrV4>,
    pub stats: Arc<Stats>,
    listeners: JoinSet<()>,
    connections: Arc<Mutex<JoinSet<()>>>,
    healed: tokio::sync::watch::Sender<bool>,
}

/// A relayed connection's view of whether its fault was healed.
type Healed = tokio::sync::watch::Receiver<bool>;

/// Sleeps until `until`, or less once the fault is healed.
async fn wait_unless_healed(healed: &mut Healed, until: Instant) {
    if *healed.borrow() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = healed.wait_for(|h| *h) => {}
    }
}

/// Counts a relayed connection open while it lives.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Listens on `ip` (a port the kernel picks) for each of `upstreams`,
    /// in order; `seed` draws the jitter and the segment sizes.
    pub async fn start(
        ip: Ipv4Addr,
        upstreams: &[SocketAddrV4],
        toxic: Toxic,
        seed: u64,
    ) -> std::io::Result<Proxy> {
        let stats = Arc::new(Stats::default());
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let (healed, _) = tokio::sync::watch::channel(false);
        let mut listeners = JoinSet::new();
        let mut listening = Vec::new();
        for (i, &upstream) in upstreams.iter().enumerate() {
            let listener = TcpListener::bind((ip, 0)).await?;
            let SocketAddr::V4(local) = listener.local_addr()? else {
                unreachable!("bound to an IPv4 address");
            };
            listening.push(local);
            let (stats, all, healed) = (stats.clone(), connections.clone(), healed.clone());
            let seed = seed ^ ((i as u64) << 32);
            listeners.spawn(async move {
                let mut n = 0u64;
                while let Ok((client, SocketAddr::V4(peer))) = listener.accept().await {
                    stats.accepted(peer);
                    n += 1;
                    let rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(n));
                    let (stats, healed) = (stats.clone(), healed.subscribe());
                    let mut all = all.lock().unwrap();
                    // Reaps the relays that ended, so a long hold's many
                    // short connections do not pile up.
                    while all.try_join_next().is_some() {}
                    all.spawn(relay(client, peer, upstream, toxic, rng, stats, healed));
                }
            });
        }
        Ok(Proxy {
            listening,
            stats,
            listeners,
            connections,
            healed,
        })
    }

    /// The listening address of each upstream, in `start`'s order.
    pub fn listening(&self) -> &[SocketAddrV4] {
        &self.listening
    }

    /// Ends the toxic: stops listening, lets every queued byte go, and
    /// relays the connections still open unchanged until they end (a
    /// blackholed one ends here: it has nowhere to go). What it saw.
    pub fn heal(&mut self) -> StatsSnapshot {
        self.listeners.abort_all();
        self.healed.send_replace(true);
        self.stats.snapshot()
    }

    /// Connections it still relays.
    pub fn open(&self) -> u64 {
        self.stats.open.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection it relays.
    pub fn stop(&mut self) -> StatsSnapshot {
        self.listeners.abort_all();
        self.connections.lock().unwrap().abort_all();
        self.stats.snapshot()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects from `from` (kernel-chosen port), marked `MARK`.
async fn connect_marked(from: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_mark(MARK)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
    let socket = TcpSocket::from_std_stream(s.into());
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(SocketAddr::V4(to)))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn relay(
    client: TcpStream,
    peer: SocketAddrV4,
    upstream: SocketAddrV4,
    toxic: Toxic,
    mut rng: ChaCha8Rng,
    stats: Arc<Stats>,
    mut healed: Healed,
) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(stats.clone());
    if toxic == Toxic::Blackhole {
        let (mut r, _w) = client.into_split();
        let swallow = async {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = r.read(&mut buf).await {
                stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The opener closed its side; keep ours open, silent.
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = swallow => {}
            _ = healed.wait_for(|h| *h) => {}
        }
        return;
    }
    let server = match connect_marked(*peer.ip(), upstream).await {
        Ok(s) => s,
        Err(_) => {
            stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if let Toxic::Slicer { .. } = toxic {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up_rng = ChaCha8Rng::seed_from_u64(rng.random());
    let up = pump(
        cr,
        sw,
        toxic,
        Dir::Up,
        up_rng,
        stats.clone(),
        healed.clone(),
    );
    let down = pump(sr, cw, toxic, Dir::Down, rng, stats.clone(), healed);
    // A direction that ends cleanly was passed on (a half-close) and the
    // other goes on; one that ends otherwise (a reset, a truncation, an
    // error) ends the relay at once.
    tokio::pin!(up, down);
    tokio::select! {
        clean = &mut up => if clean { down.await; },
        clean = &mut down => if clean { up.await; },
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    Up,
    Down,
}

/// Relays one direction until end of stream (then passes the end on and
/// returns true: the other direction may go on, a half-close), an error,
/// or what the toxic ends it with (a reset, a truncation: false, the
/// whole relay ends).
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    toxic: Toxic,
    dir: Dir,
    mut rng: ChaCha8Rng,
    stats: Arc<Stats>,
    mut healed: Healed,
) -> bool {
    let counter = match dir {
        Dir::Up => &stats.bytes_up,
        Dir::Down => &stats.bytes_down,
    };
    if let Toxic::Latency {
        delay_ms,
        jitter_ms,
    } = toxic
    {
        return delayed(r, w, delay_ms, jitter_ms, rng, counter, healed).await;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Err(_) => return false,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        let toxic = match *healed.borrow() {
            true => Toxic::None,
            false => toxic,
        };
        match toxic {
            Toxic::ResetPeer if dir == Dir::Down => {
                // Closing with a zero linger sends RST instead of FIN; the
                // relay ends with this direction and drops both halves.
                let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
                stats.resets.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Toxic::LimitData { bytes } if dir == Dir::Down => {
                let room = bytes.saturating_sub(total) as usize;
                if chunk.len() >= room {
                    let _ = w.write_all(&chunk[..room]).await;
                    counter.fetch_add(room as u64, Ordering::Relaxed);
                    stats.truncated.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
            _ => {}
        }
        total += chunk.len() as u64;
        match toxic {
            Toxic::Slicer { bytes } => {
                while !chunk.is_empty() {
                    let size = rng
                        .random_range(bytes.div_ceil(2)..=bytes + bytes / 2)
                        .max(1);
                    let (seg, rest) = chunk.split_at(size.min(chunk.len()));
                    if w.write_all(seg).await.is_err() {
                        return false;
                    }
                    chunk = rest;
                    tokio::task::yield_now().await;
                }
            }
            Toxic::Bandwidth { bytes_per_sec } => {
                let started = Instant::now();
                if w.write_all(chunk).await.is_err() {
                    return false;
                }
                let due = Duration::from_secs_f64(chunk.len() as f64 / bytes_per_sec.max(1) as f64);
                wait_unless_healed(&mut healed, started + due).await;
            }
            _ => {
                if w.write_all(chunk).await.is_err() {
                    return false;
                }
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    w.shutdown().await.is_ok()
}

/// The latency toxic's direction: a reader stamps each chunk with the time
/// it may leave (never before the one ahead of it), a writer sends it
/// then, or at once after healing.
async fn delayed(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    delay_ms: u64,
    jitter_ms: u64,
    mut rng: ChaCha8Rng,
    counter: &AtomicU64,
    mut healed: Healed,
) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(DELAY_QUEUE);
    let stamp_healed = healed.clone();
    let reader = async move {
        let mut last = Instant::now();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match r.read(&mut buf).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(n) => n,
            };
            buf.truncate(n);
            let jitter = rng.random_range(0..=2 * jitter_ms) as i64 - jitter_ms as i64;
            let wait = match *stamp_healed.borrow() {
                true => Duration::ZERO,
                false => Duration::from_millis((delay_ms as i64 + jitter).max(0) as u64),
            };
            last = last.max(Instant::now() + wait);
            if tx.send((last, buf)).await.is_err() {
                return false;
            }
        }
    };
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            wait_unless_healed(&mut healed, at).await;
            if w.write_all(&buf).await.is_err() {
                return false;
            }
            counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        w.shutdown().await.is_ok()
    };
    let (read, wrote) = tokio::join!(reader, writer);
    read && wrote
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each read with `reply` (or echoes).
    async fn server(reply: Option<&'static [u8]>) -> SocketAddrV4 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        let out = reply.unwrap_or(&buf[..n]).to_vec();
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn through(toxic: Toxic, upstream: SocketAddrV4) -> (Proxy, TcpStream) {
        let p = Proxy::start(Ipv4Addr::LOCALHOST, &[upstream], toxic, 7)
            .await
            .unwrap();
        let c = TcpStream::connect(p.listening()[0]).await.unwrap();
        (p, c)
    }

    async fn round_trip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        c.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(got)
    }

    // The relay marks its upstream sockets, which needs CAP_NET_ADMIN:
    // these tests run as root, as network faults do.

    #[tokio::test]
    async fn latency_delays_each_way_and_keeps_the_bytes_in_order() {
        let up = server(None).await;
        let (_p, mut c) = through(
            Toxic::Latency {
                delay_ms: 100,
                jitter_ms: 20,
            },
            up,
        )
        .await;
        let t = std::time::Instant::now();
        for i in 0..3u8 {
            assert_eq!(round_trip(&mut c, &[i; 100]).await.unwrap(), vec![i; 100]);
        }
        // Three round trips, each 2 x (100 +- 20) ms.
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(480), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[tokio::test]
    async fn bandwidth_caps_the_rate() {
        let up = server(None).await;
        let (_p, mut c) = through(
            Toxic::Bandwidth {
                bytes_per_sec: 200_000,
            },
            up,
        )
        .await;
        let t = std::time::Instant::now();
        let msg = vec![5u8; 100_000];
        assert_eq!(round_trip(&mut c, &msg).await.unwrap(), msg);
        // 100 kB up and back at 200 kB/s each way: at least 0.5 s.
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_blackhole_accepts_and_never_answers() {
        let up = server(None).await;
        let (p, mut c) = through(Toxic::Blackhole, up).await;
        c.write_all(b"PUT / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await;
        assert!(read.is_err(), "answered: {read:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.stats.snapshot().bytes_up, 18);
    }

    #[tokio::test]
    async fn reset_peer_delivers_the_request_and_resets_at_the_answer() {
        let up = server(Some(b"HTTP/1.1 200 OK\r\n\r\n")).await;
        let (p, mut c) = through(Toxic::ResetPeer, up).await;
        let err = round_trip(&mut c, b"PUT /k HTTP/1.1\r\n\r\n").await;
        let err = err.expect_err("the answer must not arrive");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{err:?}"
        );
        let s = p.stats.snapshot();
        assert_eq!((s.bytes_up, s.resets), (19, 1), "{s:?}");
    }

    #[tokio::test]
    async fn limit_data_closes_after_n_bytes_of_answer() {
        let up = server(None).await;
        let (p, mut c) = through(Toxic::LimitData { bytes: 10 }, up).await;
        c.write_all(&[1u8; 100]).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert_eq!(got, vec![1u8; 10]);
        assert_eq!(p.stats.snapshot().truncated, 1);
    }

    #[tokio::test]
    async fn the_slicer_relays_every_byte() {
        let up = server(None).await;
        let (_p, mut c) = through(Toxic::Slicer { bytes: 8 }, up).await;
        let msg: Vec<u8> = (0..=255).collect();
        assert_eq!(round_trip(&mut c, &msg).await.unwrap(), msg);
    }

    #[tokio::test]
    async fn healing_ends_the_toxic_and_keeps_the_open_connections() {
        let up = server(None).await;
        let (mut p, mut c) = through(
            Toxic::Latency {
                delay_ms: 2000,
                jitter_ms: 0,
            },
            up,
        )
        .await;
        c.write_all(b"queued").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        let seen = p.heal();
        assert_eq!(seen.open, 1);
        // The queued bytes leave at once, and the connection lives on
        // without the delay.
        let mut got = [0u8; 6];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"queued");
        assert_eq!(round_trip(&mut c, b"after").await.unwrap(), b"after");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        // No new connection is accepted.
        let again = TcpStream::connect(p.listening()[0]).await;
        assert!(again.is_err(), "{again:?}");
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(p.open(), 0);
    }

    #[tokio::test]
    async fn a_half_close_is_passed_on_and_the_answer_still_arrives() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(up) = l.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(format!("{} bytes", got.len()).as_bytes())
                .await
                .unwrap();
        });
        let (_p, mut c) = through(Toxic::None, up).await;
        c.write_all(&[0u8; 1000]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "1000 bytes");
    }

    #[tokio::test]
    async fn stopping_closes_every_relayed_connection_and_remembers_its_peers() {
        let up = server(None).await;
        let (mut p, mut c) = through(Toxic::None, up).await;
        assert_eq!(round_trip(&mut c, b"hello").await.unwrap(), b"hello");
        let SocketAddr::V4(me) = c.local_addr().unwrap() else {
            unreachable!()
        };
        assert!(p.stats.accepted_from(me));
        p.stop();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
}
