//! The `live` clients' reading loop: a few threads, each with its own `epoll` (mio) over a share
//! of the connections. A readable socket is read into the thread's scratch buffer (allocated and
//! zeroed once) until a read comes back short, every complete frame in it is scanned in place,
//! and only a partial frame's tail is kept per connection. Per frame that is one `recv` and a
//! share of one `epoll_wait`: less than a task runtime's wake-ups and the `recv` that ends in
//! `EAGAIN`, so that the client costs less per event than the servers it measures.

use crate::ws::{self, head};
use crate::Stats;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

struct Live {
    s: TcpStream,
    carry: Vec<u8>,
    st: Stats,
    closed: bool,
}

/// The measured window, in wall-clock microseconds, and when to stop.
#[derive(Clone, Copy)]
pub struct Window {
    pub start_us: i64,
    pub end_us: i64,
    pub stop_at: Instant,
}

/// Reads `conns` (sockets with the bytes already read past their `welcome`) until the window
/// ends; returns each one's figures and whether the server closed it early.
pub fn run(
    conns: Vec<(std::net::TcpStream, Vec<u8>)>,
    w: Window,
) -> std::io::Result<Vec<(Stats, bool)>> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 256 << 10];
    let mut live: Vec<Live> = Vec::with_capacity(conns.len());
    for (i, (s, carry)) in conns.into_iter().enumerate() {
        let mut s = TcpStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        let mut c = Live {
            s,
            carry: Vec::new(),
            st: Stats::new(),
            closed: false,
        };
        let mut first = carry;
        let used = frames(&mut first, &mut c, w);
        c.carry.extend_from_slice(&first[used..]);
        live.push(c);
    }
    loop {
        let now = Instant::now();
        if now >= w.stop_at {
            break;
        }
        match poll.poll(&mut events, Some(w.stop_at - now)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let c = &mut live[ev.token().0];
            if !c.closed {
                read(c, &mut scratch, w);
            }
        }
    }
    Ok(live
        .into_iter()
        .map(|mut c| {
            let _ =
                c.s.write(&ws::client_frame(ws::CLOSE, &1000u16.to_be_bytes()));
            (c.st, c.closed)
        })
        .collect())
}

/// Reads a readable socket until a short read (drained; edge-triggered epoll reports the next
/// arrival), scanning every complete frame.
fn read(c: &mut Live, scratch: &mut Vec<u8>, w: Window) {
    loop {
        let pre = c.carry.len();
        if scratch.len() < pre + (64 << 10) {
            scratch.resize(pre + (256 << 10), 0);
        }
        scratch[..pre].copy_from_slice(&c.carry);
        c.carry.clear();
        match c.s.read(&mut scratch[pre..]) {
            Ok(0) => {
                c.closed = true;
                return;
            }
            Ok(n) => {
                let buf = &mut scratch[..pre + n];
                let used = frames(buf, c, w);
                c.carry.extend_from_slice(&buf[used..]);
                if pre + n < scratch.len() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.carry.extend_from_slice(&scratch[..pre]);
                return;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                c.carry.extend_from_slice(&scratch[..pre])
            }
            Err(_) => {
                c.closed = true;
                return;
            }
        }
    }
}

/// Takes every complete frame at the start of `buf`; returns the bytes used.
fn frames(buf: &mut [u8], c: &mut Live, w: Window) -> usize {
    let mut at = 0;
    while let Some(h) = head(&buf[at..]) {
        let total = h.header + h.len;
        if buf.len() - at < total {
            break;
        }
        let payload = &mut buf[at + h.header..at + total];
        if let Some(m) = h.mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i & 3];
            }
        }
        match h.opcode {
            ws::TEXT | ws::BINARY if h.fin => {
                let now = crate::now_us();
                c.st.take(h.opcode, payload, now, now >= w.start_us && now < w.end_us);
            }
            ws::PING => {
                let _ = c.s.write(&ws::client_frame(ws::PONG, payload));
            }
            ws::CLOSE | ws::TEXT | ws::BINARY | 0 => {
                c.closed = true; // a close, or a fragmented message (not supported)
                return buf.len();
            }
            _ => {}
        }
        at += total;
    }
    at
}
