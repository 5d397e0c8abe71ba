//! The load engine: connections, publisher and reader tasks, completion tracking and the
//! measured phase.
//!
//! Every message a publisher sends carries, in its `data` string, the send time (ns since the
//! run started), a sequence number and the publisher's index, as 40 hex digits followed by
//! padding. Readers find `"data":"` in each event, record the latency in one HDR histogram and
//! count the message against its tracking slot; when every reading recipient has it, the
//! publisher's in-flight count drops. Publishers never have more than `window` messages in
//! flight, so a closed loop at "max" rate cannot run away, and a fixed rate that the server
//! cannot sustain shows up as skipped sends.
//!
//! Everything runs on one thread: shared state is `Cell`s, and no frame allocates.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::procfs::{self, Sample};
use crate::report::{Latency, Loadgen, Loss, Phase, Process, Server};
use crate::ws::{self, ReadBuf, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Hex digits of the message header in `data`: 16 (send time) + 16 (sequence) + 8 (publisher).
pub const HEADER_DIGITS: usize = 40;
/// Messages a publisher builds into one write at most.
const MAX_BATCH: u32 = 256;
/// `"data":"` — found in each received event to locate the message header.
const DATA_KEY: &[u8] = b"\"data\":\"";
/// Load-generator CPU share above which its core counts as saturated.
const SATURATED: f64 = 0.90;

/// One connection with its reusable buffers.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    mask: [u8; 4],
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address (loopback only).
    pub addr: SocketAddr,
    /// Request path, e.g. `/ws`.
    pub path: String,
}

/// What one connection does during set-up.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Index of the server (in the targets given to [`open`]) to connect to.
    pub target: usize,
    /// Channels to subscribe to.
    pub subscribe: Vec<String>,
    /// A tiny `SO_RCVBUF` (clients that never read).
    pub small_rcvbuf: bool,
    /// Read buffer size.
    pub read_buffer: usize,
}

/// One publisher.
#[derive(Debug, Clone)]
pub struct PubSpec {
    /// Index of its connection.
    pub conn: usize,
    /// Channels it publishes to, round robin, with the number of reading recipients of each.
    pub channels: Vec<(String, u32)>,
    /// Whether it also reads and counts events (it is a subscriber too, as in `chat`).
    pub reads_events: bool,
}

/// Offered rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Closed loop: publish whenever the in-flight window has room.
    Max,
    /// Open loop at this many messages per second over all publishers (still bounded by the
    /// window; sends that do not fit are skipped and counted).
    Fixed(f64),
}

/// Parameters of one measured phase.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    /// Scenario name for the report.
    pub scenario: String,
    /// Phase name for the report.
    pub phase: String,
    /// Label for the report.
    pub label: String,
    /// Publishers.
    pub publishers: Vec<PubSpec>,
    /// Connections that read (and count events) without publishing.
    pub readers: Vec<usize>,
    /// Subscribing clients, for the report.
    pub clients: usize,
    /// Never-reading clients, for the report.
    pub slow_clients: usize,
    /// Offered rate.
    pub rate: Rate,
    /// In-flight bound per publisher.
    pub window: u32,
    /// Messages per write in closed-loop mode (the publisher waits until this much room).
    pub batch: u32,
    /// `data` string length.
    pub size: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Longest wait for outstanding messages after publishing stops.
    pub drain: Duration,
    /// Server process to observe.
    pub server_pid: Option<u32>,
    /// More processes whose CPU time per delivery is reported (e.g. other nodes, Redis).
    pub watch: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seq: u64,
    remaining: u32,
    publisher: u32,
}

#[derive(Debug)]
struct PubState {
    inflight: Cell<u32>,
    /// Notify the publisher when `inflight` drops to this.
    wake_at: Cell<u32>,
    notify: Notify,
}

/// State shared by all tasks of a run (one thread).
#[derive(Debug)]
pub struct Shared {
    t0: Instant,
    ring: RefCell<Vec<Cell<Slot>>>,
    ring_mask: Cell<u64>,
    next_seq: Cell<u64>,
    pubs: RefCell<Rc<[PubState]>>,
    delivered: Cell<u64>,
    published: Cell<u64>,
    expected: Cell<u64>,
    stale: Cell<u64>,
    skipped: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    closed: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    recording: Cell<bool>,
    publishing: Cell<bool>,
    finder: memmem::Finder<'static>,
    /// Where `"data":"` was found in the last event.
    data_at: Cell<usize>,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Fresh state; the clock starts now.
    pub fn new() -> Self {
        Shared {
            t0: Instant::now(),
            ring: RefCell::new(Vec::new()),
            ring_mask: Cell::new(0),
            next_seq: Cell::new(1),
            pubs: RefCell::new(Rc::from(Vec::new())),
            delivered: Cell::new(0),
            published: Cell::new(0),
            expected: Cell::new(0),
            stale: Cell::new(0),
            skipped: Cell::new(0),
            errors: Cell::new(0),
            first_error: RefCell::new(None),
            closed: Cell::new(0),
            hist: RefCell::new(
                Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid bounds"),
            ),
            recording: Cell::new(false),
            publishing: Cell::new(false),
            finder: memmem::Finder::new(DATA_KEY),
            data_at: Cell::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn error(&self, what: impl FnOnce() -> String) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(what());
        }
    }

    /// Handles one received data frame.
    fn on_data(&self, payload: &[u8], now: u64) {
        // Events of one run share their layout: try where the key was last time first.
        let last = self.data_at.get();
        let i = if payload.get(last..last + DATA_KEY.len()) == Some(DATA_KEY) {
            last
        } else {
            let Some(i) = self.finder.find(payload) else {
                return self.on_other(payload);
            };
            self.data_at.set(i);
            i
        };
        let Some(h) = payload.get(i + DATA_KEY.len()..i + DATA_KEY.len() + HEADER_DIGITS) else {
            return self.on_other(payload);
        };
        let (Some(ts), Some(seq), Some(publisher)) =
            (hex(&h[..16]), hex(&h[16..32]), hex(&h[32..40]))
        else {
            return self.on_other(payload);
        };
        self.delivered.set(self.delivered.get() + 1);
        if self.recording.get() {
            self.hist
                .borrow_mut()
                .saturating_record(now.saturating_sub(ts).max(1));
        }
        let ring = self.ring.borrow();
        let Some(slot) = ring.get((seq & self.ring_mask.get()) as usize) else {
            return;
        };
        let mut s = slot.get();
        if s.seq == seq && s.remaining > 0 && u64::from(s.publisher) == publisher {
            s.remaining -= 1;
            slot.set(s);
            if s.remaining == 0 {
                self.release(s.publisher);
            }
        }
    }

    fn on_other(&self, payload: &[u8]) {
        if payload.starts_with(b"{\"type\":\"error\"") {
            self.error(|| String::from_utf8_lossy(payload).into_owned());
        }
    }

    /// One of `publisher`'s messages is complete (or given up).
    fn release(&self, publisher: u32) {
        let pubs = self.pubs.borrow();
        if let Some(p) = pubs.get(publisher as usize) {
            let n = p.inflight.get().saturating_sub(1);
            p.inflight.set(n);
            if n == p.wake_at.get() {
                p.notify.notify_one();
            }
        }
    }

    /// Allocates a sequence number for a message of `publisher` with `recipients` readers.
    fn track(&self, publisher: u32, recipients: u32) -> u64 {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.published.set(self.published.get() + 1);
        self.expected
            .set(self.expected.get() + u64::from(recipients));
        if recipients == 0 {
            return seq;
        }
        {
            let ring = self.ring.borrow();
            let slot = &ring[(seq & self.ring_mask.get()) as usize];
            let old = slot.get();
            slot.set(Slot {
                seq,
                remaining: recipients,
                publisher,
            });
            if old.remaining > 0 {
                self.stale.set(self.stale.get() + 1);
                drop(ring);
                self.release(old.publisher);
            }
        }
        let pubs = self.pubs.borrow();
        let p = &pubs[publisher as usize];
        p.inflight.set(p.inflight.get() + 1);
        seq
    }

    /// Resets tracking for a new phase with these publishers' windows.
    fn reset(&self, publishers: usize, window: u32, wake_at: u32) {
        let slots = (publishers.max(1) * window as usize * 4)
            .max(1024)
            .next_power_of_two();
        *self.ring.borrow_mut() = vec![Cell::new(Slot::default()); slots];
        self.ring_mask.set(slots as u64 - 1);
        *self.pubs.borrow_mut() = (0..publishers)
            .map(|_| PubState {
                inflight: Cell::new(0),
                wake_at: Cell::new(wake_at),
                notify: Notify::new(),
            })
            .collect();
        self.hist.borrow_mut().reset();
    }
}

/// Parses lowercase hex digits (as written by [`write_hex`]).
fn hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Appends `v` as `digits` lowercase hex digits.
fn write_hex(out: &mut Vec<u8>, v: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xF) as usize]);
    }
}

/// Builds the publish request payload into `out` (cleared first).
fn publish_payload(
    out: &mut Vec<u8>,
    channel: &str,
    ts: u64,
    seq: u64,
    publisher: u32,
    size: usize,
) {
    out.clear();
    out.extend_from_slice(b"{\"type\":\"publish\",\"channel\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",\"data\":\"");
    write_hex(out, ts, 16);
    write_hex(out, seq, 16);
    write_hex(out, u64::from(publisher), 8);
    let pad = size.saturating_sub(HEADER_DIGITS);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Opens the connections (at most `concurrency` handshakes at a time), each to
/// `targets[spec.target]`, subscribes each and waits until the server has answered a ping sent
/// behind the subscriptions (a server with a broker answers once its subscriptions are in place
/// there too).
///
/// # Errors
/// The first connection that failed, with its index; a spec whose target is out of range.
pub async fn open(
    targets: &[Target],
    specs: &[ConnSpec],
    concurrency: usize,
    timeout: Duration,
) -> Result<Vec<Conn>, String> {
    if let Some(i) = specs.iter().position(|s| s.target >= targets.len()) {
        return Err(format!("connection {i}: no target {}", specs[i].target));
    }
    let work = stream::iter(specs.iter().enumerate())
        .map(|(i, spec)| async move {
            let target = &targets[spec.target];
            let r = tokio::time::timeout(timeout, open_one(target, spec, i as u32)).await;
            (i, r)
        })
        .buffer_unordered(concurrency.max(1));
    futures_util::pin_mut!(work);
    let mut conns: Vec<Option<Conn>> = specs.iter().map(|_| None).collect();
    while let Some((i, r)) = work.next().await {
        match r {
            Ok(Ok(c)) => conns[i] = Some(c),
            Ok(Err(e)) => return Err(format!("connection {i}: {e}")),
            Err(_) => return Err(format!("connection {i}: set-up timed out")),
        }
    }
    Ok(conns.into_iter().flatten().collect())
}

async fn open_one(target: &Target, spec: &ConnSpec, index: u32) -> Result<Conn, String> {
    let (stream, rest) = ws::connect(target.addr, &target.path, spec.small_rcvbuf.then_some(4096))
        .await
        .map_err(|e| e.to_string())?;
    let seed = index.wrapping_mul(0x9E37_79B9) ^ 0x5bd1_e995;
    let mut conn = Conn {
        stream,
        rbuf: ReadBuf::new(spec.read_buffer, &rest),
        wbuf: Vec::with_capacity(1024),
        mask: seed.to_le_bytes(),
    };
    let mut text = Vec::new();
    for ch in &spec.subscribe {
        text.clear();
        text.extend_from_slice(b"{\"type\":\"subscribe\",\"channel\":\"");
        text.extend_from_slice(ch.as_bytes());
        text.extend_from_slice(b"\"}");
        ws::encode_masked(&mut conn.wbuf, OP_TEXT, &text, conn.mask);
    }
    ws::encode_masked(&mut conn.wbuf, OP_TEXT, b"{\"type\":\"ping\"}", conn.mask);
    conn.stream
        .write_all(&conn.wbuf)
        .await
        .map_err(|e| e.to_string())?;
    conn.wbuf.clear();
    loop {
        while let Some(f) = conn.rbuf.next_frame().map_err(|e| e.to_string())? {
            match f.opcode {
                OP_TEXT | OP_BINARY => {
                    if memmem::find(f.payload, b"\"type\":\"pong\"").is_some() {
                        return Ok(conn);
                    }
                    if f.payload.starts_with(b"{\"type\":\"error\"") {
                        return Err(String::from_utf8_lossy(f.payload).into_owned());
                    }
                }
                OP_CLOSE => return Err("closed by the server during set-up".to_owned()),
                _ => {}
            }
        }
        match conn.rbuf.fill(&mut conn.stream).await {
            Ok(0) => return Err("connection closed during set-up".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A connection lent to a task; handed back to its slot when the task ends or is aborted.
struct Lease {
    slot: Rc<RefCell<Option<Conn>>>,
    conn: Option<Conn>,
}

impl Lease {
    fn take(slot: &Rc<RefCell<Option<Conn>>>) -> Option<Lease> {
        let conn = slot.borrow_mut().take()?;
        Some(Lease {
            slot: Rc::clone(slot),
            conn: Some(conn),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.slot.borrow_mut() = self.conn.take();
    }
}

/// Parses every complete frame in the read buffer. `count` says whether data frames are
/// counted as deliveries. Returns false when the connection is over.
fn drain_frames(conn: &mut Conn, sh: &Shared, count: bool) -> bool {
    let Conn {
        rbuf, wbuf, mask, ..
    } = conn;
    let now = sh.now_ns();
    loop {
        match rbuf.next_frame() {
            Ok(Some(f)) => match f.opcode {
                OP_TEXT | OP_BINARY if f.fin => {
                    if count {
                        sh.on_data(f.payload, now);
                    } else {
                        sh.on_other(f.payload);
                    }
                }
                OP_PING => ws::encode_masked(wbuf, OP_PONG, f.payload, *mask),
                OP_CLOSE => {
                    sh.closed.set(sh.closed.get() + 1);
                    return false;
                }
                OP_PONG => {}
                _ => sh.error(|| "fragmented message (not expected from a hub)".to_owned()),
            },
            Ok(None) => return true,
            Err(e) => {
                sh.error(|| format!("bad frame: {e}"));
                return false;
            }
        }
    }
}

async fn reader(slot: Rc<RefCell<Option<Conn>>>, sh: Rc<Shared>) {
    let Some(mut lease) = Lease::take(&slot) else {
        return;
    };
    let Some(conn) = lease.conn.as_mut() else {
        return;
    };
    loop {
        match conn.rbuf.fill(&mut conn.stream).await {
            Ok(0) | Err(_) => {
                sh.closed.set(sh.closed.get() + 1);
                return;
            }
            Ok(_) => {}
        }
        if !drain_frames(conn, &sh, true) {
            return;
        }
        if !conn.wbuf.is_empty() {
            if conn.stream.write_all(&conn.wbuf).await.is_err() {
                sh.closed.set(sh.closed.get() + 1);
                return;
            }
            conn.wbuf.clear();
        }
    }
}

struct PubParams {
    me: u32,
    spec: PubSpec,
    rate: Rate,
    per_pub_rate: f64,
    window: u32,
    batch: u32,
    size: usize,
}

async fn publisher(slot: Rc<RefCell<Option<Conn>>>, sh: Rc<Shared>, p: PubParams) {
    let Some(mut lease) = Lease::take(&slot) else {
        return;
    };
    let Some(conn) = lease.conn.as_mut() else {
        return;
    };
    let pubs = Rc::clone(&sh.pubs.borrow());
    let state = &pubs[p.me as usize];
    let mut scratch = Vec::with_capacity(p.size + 128);
    let mut next_channel = 0usize;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far);
    tokio::pin!(sleep);
    loop {
        let mut wake = None;
        if sh.publishing.get() {
            let room = p.window.saturating_sub(state.inflight.get());
            let n = match p.rate {
                Rate::Max => {
                    if room >= p.batch {
                        room.min(MAX_BATCH)
                    } else {
                        0
                    }
                }
                Rate::Fixed(_) => {
                    let due = (start.elapsed().as_secs_f64() * p.per_pub_rate) as u64;
                    let mut want = due.saturating_sub(sent);
                    if want > u64::from(room) {
                        let skip = want - u64::from(room);
                        sh.skipped.set(sh.skipped.get() + skip);
                        sent += skip;
                        want = u64::from(room);
                    }
                    let n = want.min(u64::from(MAX_BATCH)) as u32;
                    let next = if want > u64::from(n) {
                        start // more is due right away
                    } else {
                        start
                            + Duration::from_secs_f64(
                                (sent + u64::from(n) + 1) as f64 / p.per_pub_rate,
                            )
                    };
                    wake = Some(next);
                    n
                }
            };
            if n > 0 {
                let ts = sh.now_ns();
                for _ in 0..n {
                    let (channel, recipients) = &p.spec.channels[next_channel];
                    next_channel = (next_channel + 1) % p.spec.channels.len();
                    let seq = sh.track(p.me, *recipients);
                    publish_payload(&mut scratch, channel, ts, seq, p.me, p.size);
                    ws::encode_masked(&mut conn.wbuf, OP_TEXT, &scratch, conn.mask);
                }
                sent += u64::from(n);
            }
        }
        if !conn.wbuf.is_empty() {
            if conn.stream.write_all(&conn.wbuf).await.is_err() {
                sh.closed.set(sh.closed.get() + 1);
                return;
            }
            conn.wbuf.clear();
        }
        if let Some(at) = wake {
            sleep.as_mut().reset(at.into());
        }
        let timed = wake.is_some();
        let read = {
            let Conn { stream, rbuf, .. } = &mut *conn;
            tokio::select! {
                biased;
                r = rbuf.fill(stream) => Some(r),
                () = state.notify.notified() => None,
                () = &mut sleep, if timed => None,
            }
        };
        match read {
            None => {}
            Some(Ok(0) | Err(_)) => {
                sh.closed.set(sh.closed.get() + 1);
                return;
            }
            Some(Ok(_)) if !drain_frames(conn, &sh, p.spec.reads_events) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// Runs one measured phase over open connections (kept open for the next phase).
pub async fn run_phase(
    sh: &Rc<Shared>,
    conns: &[Rc<RefCell<Option<Conn>>>],
    spec: &PhaseSpec,
) -> Phase {
    let npubs = spec.publishers.len();
    let wake_at = match spec.rate {
        Rate::Max => spec.window.saturating_sub(spec.batch),
        Rate::Fixed(_) => spec.window.saturating_sub(1),
    };
    sh.reset(npubs, spec.window, wake_at);
    let per_pub_rate = match spec.rate {
        Rate::Fixed(r) => r / npubs.max(1) as f64,
        Rate::Max => 0.0,
    };
    let base = Counts::take(sh);
    sh.publishing.set(true);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for &r in &spec.readers {
        tasks.push(tokio::task::spawn_local(reader(
            Rc::clone(&conns[r]),
            Rc::clone(sh),
        )));
    }
    for (i, p) in spec.publishers.iter().enumerate() {
        tasks.push(tokio::task::spawn_local(publisher(
            Rc::clone(&conns[p.conn]),
            Rc::clone(sh),
            PubParams {
                me: i as u32,
                spec: p.clone(),
                rate: spec.rate,
                per_pub_rate,
                window: spec.window,
                batch: spec.batch.clamp(1, spec.window.max(1)),
                size: spec.size,
            },
        )));
    }
    tokio::time::sleep(spec.warmup).await;

    let s0 = Snapshot::take(sh, spec.server_pid);
    let w0 = watched(&spec.watch);
    sh.recording.set(true);
    let mut rss_max = s0.server.map_or(0, |s| s.rss_kib);
    let end = tokio::time::Instant::now() + spec.duration;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
        if let Some(s) = spec.server_pid.and_then(|p| procfs::sample(Some(p))) {
            rss_max = rss_max.max(s.rss_kib);
        }
    }
    let s1 = Snapshot::take(sh, spec.server_pid);
    let w1 = watched(&spec.watch);
    sh.recording.set(false);

    // Stop publishing and wait (bounded) for what is still on its way.
    sh.publishing.set(false);
    for p in sh.pubs.borrow().iter() {
        p.notify.notify_one();
    }
    let drain_end = tokio::time::Instant::now() + spec.drain;
    while sh.delivered.get() - base.delivered < sh.expected.get() - base.expected
        && tokio::time::Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let fin = Counts::take(sh);

    let wall = s1.at.duration_since(s0.at).as_secs_f64();
    let delivered = s1.counts.delivered - s0.counts.delivered;
    let published = s1.counts.published - s0.counts.published;
    let server = match (s0.server, s1.server) {
        (Some(a), Some(b)) => {
            let cpu = b.cpu_s - a.cpu_s;
            let syscw = b.syscw - a.syscw;
            Some(Server {
                cpu_s: cpu,
                cpu_util: cpu / wall,
                cpu_us_per_delivery: per_delivery(cpu * 1e6, delivered),
                rss_kib_start: a.rss_kib,
                rss_kib_end: b.rss_kib,
                rss_kib_max: rss_max.max(b.rss_kib),
                syscw,
                syscr: b.syscr - a.syscr,
                syscw_per_delivery: per_delivery(syscw as f64, delivered),
            })
        }
        _ => None,
    };
    let processes = spec
        .watch
        .iter()
        .zip(w0.iter().zip(&w1))
        .filter_map(|((name, pid), (a, b))| {
            let (a, b) = ((*a)?, (*b)?);
            let cpu = b.cpu_s - a.cpu_s;
            Some(Process {
                name: name.clone(),
                pid: *pid,
                cpu_s: cpu,
                cpu_util: cpu / wall,
                cpu_us_per_delivery: per_delivery(cpu * 1e6, delivered),
                user_s: b.user_s - a.user_s,
                rss_kib_end: b.rss_kib,
            })
        })
        .collect::<Vec<_>>();
    let lg = s1.me.cpu_s - s0.me.cpu_s;
    let server_user = match (s0.server, s1.server) {
        (Some(a), Some(b)) => b.user_s - a.user_s,
        _ => 0.0,
    };
    let watched_user: f64 = processes.iter().map(|p| p.user_s).sum();
    let other_user = (s1.machine_user_s - s0.machine_user_s)
        - server_user
        - watched_user
        - (s1.me.user_s - s0.me.user_s);
    let expected = fin.expected - base.expected;
    let received = fin.delivered - base.delivered;
    let lost = expected.saturating_sub(received);
    let hist = sh.hist.borrow();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Phase {
        scenario: spec.scenario.clone(),
        phase: spec.phase.clone(),
        label: spec.label.clone(),
        clients: spec.clients,
        publishers: npubs,
        slow_clients: spec.slow_clients,
        size: spec.size,
        rate: match spec.rate {
            Rate::Max => "max".to_owned(),
            Rate::Fixed(r) => format!("{r}"),
        },
        window: spec.window,
        measured_s: wall,
        published,
        publishes_per_s: published as f64 / wall,
        delivered,
        deliveries_per_s: delivered as f64 / wall,
        latency_us: Latency {
            count: hist.len(),
            p50: us(0.50),
            p90: us(0.90),
            p99: us(0.99),
            p999: us(0.999),
            max: hist.max() as f64 / 1000.0,
            mean: hist.mean() / 1000.0,
        },
        loss: Loss {
            expected,
            received,
            lost,
            lost_ratio: if expected > 0 {
                lost as f64 / expected as f64
            } else {
                0.0
            },
            skipped: fin.skipped - base.skipped,
            stale: fin.stale - base.stale,
        },
        server,
        processes,
        loadgen: Loadgen {
            cpu_util: lg / wall,
            saturated: lg / wall > SATURATED,
            other_user_cpu: (other_user / wall).max(0.0),
        },
        idle: None,
        errors: fin.errors - base.errors,
        first_error: sh.first_error.borrow().clone(),
        closed: fin.closed - base.closed,
        tcp_segments_per_delivery: per_delivery(
            s1.segments.saturating_sub(s0.segments) as f64,
            delivered,
        ),
    }
}

fn watched(watch: &[(String, u32)]) -> Vec<Option<Sample>> {
    watch
        .iter()
        .map(|(_, p)| procfs::sample(Some(*p)))
        .collect()
}

fn per_delivery(total: f64, delivered: u64) -> f64 {
    if delivered > 0 {
        total / delivered as f64
    } else {
        0.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    delivered: u64,
    published: u64,
    expected: u64,
    skipped: u64,
    stale: u64,
    errors: u64,
    closed: u64,
}

impl Counts {
    fn take(sh: &Shared) -> Self {
        Counts {
            delivered: sh.delivered.get(),
            published: sh.published.get(),
            expected: sh.expected.get(),
            skipped: sh.skipped.get(),
            stale: sh.stale.get(),
            errors: sh.errors.get(),
            closed: sh.closed.get(),
        }
    }
}

struct Snapshot {
    at: Instant,
    machine_user_s: f64,
    segments: u64,
    counts: Counts,
    server: Option<Sample>,
    me: Sample,
}

impl Snapshot {
    fn take(sh: &Shared, pid: Option<u32>) -> Self {
        Snapshot {
            at: Instant::now(),
            machine_user_s: procfs::machine_user_s().unwrap_or(0.0),
            segments: procfs::tcp_out_segments().unwrap_or(0),
            counts: Counts::take(sh),
            server: pid.and_then(|p| procfs::sample(Some(p))),
            me: procfs::sample(None).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut v = Vec::new();
        write_hex(&mut v, 0x0123_4567_89ab_cdef, 16);
        assert_eq!(v, b"0123456789abcdef");
        assert_eq!(hex(&v), Some(0x0123_4567_89ab_cdef));
        assert_eq!(hex(b"12g4"), None);
    }

    #[test]
    fn payload_has_the_requested_data_length_and_parses_back() {
        let mut out = Vec::new();
        publish_payload(&mut out, "room", 77, 5, 3, 64);
        let text = std::str::from_utf8(&out).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["data"].as_str().unwrap().len(), 64);
        // What a hub sends back: the same data string inside an event.
        let event = format!(
            r#"{{"type":"event","channel":"room","data":{},"timestamp":"x"}}"#,
            v["data"]
        );
        let sh = Shared::new();
        sh.reset(4, 8, 0);
        let seq = sh.track(3, 2);
        assert_eq!(seq, 1);
        let mut again = Vec::new();
        publish_payload(&mut again, "room", 77, seq, 3, 64);
        let data = serde_json::from_slice::<serde_json::Value>(&again).unwrap()["data"].clone();
        let event2 =
            format!(r#"{{"type":"event","channel":"room","data":{data},"timestamp":"x"}}"#);
        sh.recording.set(true);
        sh.on_data(event2.as_bytes(), 1077);
        assert_eq!(sh.delivered.get(), 1);
        assert_eq!(sh.pubs.borrow()[3].inflight.get(), 1);
        sh.on_data(event2.as_bytes(), 1077);
        assert_eq!(
            sh.pubs.borrow()[3].inflight.get(),
            0,
            "complete after 2 recipients"
        );
        assert_eq!(sh.hist.borrow().value_at_quantile(0.5), 1000);
        // A foreign message is ignored; an error frame is counted.
        sh.on_data(event.as_bytes(), 2000);
        sh.on_data(br#"{"type":"error","data":"nope"}"#, 2000);
        assert_eq!(sh.errors.get(), 1);
    }

    #[test]
    fn reused_slots_count_as_stale_and_release_the_window() {
        let sh = Shared::new();
        sh.reset(1, 1, 0);
        let slots = sh.ring.borrow().len() as u64;
        for _ in 0..slots + 1 {
            sh.track(0, 1);
        }
        assert_eq!(sh.stale.get(), 1);
        assert_eq!(sh.pubs.borrow()[0].inflight.get(), slots as u32);
    }
}
