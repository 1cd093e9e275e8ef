//! A minimal WebSocket client for the load client: the handshake, then server frames parsed in
//! place in one read buffer (filled with `read_buf`, so never zeroed; payloads neither copied
//! nor UTF-8 checked), pings answered. A general library costs more per frame than the servers
//! being measured (tungstenite zero-fills its read buffer before every `read`). Fragmented
//! messages are not supported: neither server sends them.

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;
pub const PONG: u8 = 10;

pub struct Conn {
    s: TcpStream,
    buf: BytesMut,
    /// Bytes of the message last returned, dropped from `buf` at the next call.
    taken: usize,
    min_read: usize,
}

pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub header: usize,
    pub len: usize,
}

/// The header of the frame at the start of `b`, once all of it is there.
pub fn head(b: &[u8]) -> Option<Head> {
    if b.len() < 2 {
        return None;
    }
    let (fin, opcode, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
    let (mut header, len) = match b[1] & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    let mask = if masked {
        let m: [u8; 4] = b.get(header..header + 4)?.try_into().ok()?;
        header += 4;
        Some(m)
    } else {
        None
    };
    Some(Head {
        fin,
        opcode,
        mask,
        header,
        len,
    })
}

/// `ws://host:port/path` plus a query -> (host:port, path?query).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

impl Conn {
    /// Opens the connection and completes the upgrade. `read_size`: the least free space
    /// offered to each `read`.
    pub async fn connect(url: &str, read_size: usize) -> Result<Conn> {
        let (host, target) = split_url(url)?;
        let s = TcpStream::connect(host)
            .await
            .with_context(|| format!("connect {host}"))?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            s,
            buf: BytesMut::with_capacity(read_size.max(1024)),
            taken: 0,
            min_read: read_size.max(512),
        };
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        c.s.write_all(req.as_bytes()).await?;
        let end = loop {
            if let Some(i) = memchr::memmem::find(&c.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if c.buf.len() > 64 * 1024 {
                bail!("{url}: response head too large");
            }
            if c.s.read_buf(&mut c.buf).await? == 0 {
                bail!(
                    "{url}: connection closed during the upgrade: {:?}",
                    String::from_utf8_lossy(&c.buf)
                );
            }
        };
        let status = c.buf[..end].split(|b| *b == b'\n').next().unwrap_or(b"");
        if !status.windows(5).any(|w| w == b" 101 ") {
            // Give the error body a moment to arrive, for the message.
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                c.s.read_buf(&mut c.buf),
            )
            .await;
            bail!(
                "{url}: upgrade refused: {}",
                String::from_utf8_lossy(&c.buf).replace("\r\n", " | ")
            );
        }
        c.buf.advance(end);
        Ok(c)
    }

    /// The next data message (opcode [`TEXT`] or [`BINARY`], payload), answering pings on the
    /// way; `None` when the server closed.
    pub async fn next(&mut self) -> Result<Option<(u8, &[u8])>> {
        self.buf.advance(std::mem::take(&mut self.taken));
        let (opcode, start, end) = loop {
            if let Some(h) = head(&self.buf) {
                let total = h.header + h.len;
                if self.buf.len() >= total {
                    if let Some(m) = h.mask {
                        for (i, b) in self.buf[h.header..total].iter_mut().enumerate() {
                            *b ^= m[i & 3];
                        }
                    }
                    match h.opcode {
                        TEXT | BINARY if h.fin => break (h.opcode, h.header, total),
                        TEXT | BINARY | 0 => bail!("fragmented messages are not supported"),
                        CLOSE => return Ok(None),
                        PING => {
                            let payload = self.buf[h.header..total].to_vec();
                            self.buf.advance(total);
                            self.send(PONG, &payload).await?;
                        }
                        _ => self.buf.advance(total),
                    }
                    continue;
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < self.min_read {
                self.buf.reserve(self.min_read);
            }
            if self.s.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        };
        self.taken = end;
        Ok(Some((opcode, &self.buf[start..end])))
    }

    /// The socket (non-blocking) and the bytes read past the last message returned.
    pub fn into_parts(mut self) -> Result<(std::net::TcpStream, Vec<u8>)> {
        self.buf.advance(self.taken);
        Ok((self.s.into_std()?, self.buf.to_vec()))
    }

    /// Sends one client frame (masked, with a zero mask key).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        if payload.len() > 125 {
            bail!("control payload over 125 bytes");
        }
        self.s.write_all(&client_frame(opcode, payload)).await?;
        Ok(())
    }

    /// Sends a close frame (1000) and shuts the socket down.
    pub async fn close(mut self) {
        let _ = self.send(CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.s.shutdown().await;
    }
}

/// A client control frame (masked with a zero key: the payload goes as is).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x80 | opcode,
        0x80 | payload.len().min(125) as u8,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(&payload[..payload.len().min(125)]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let h = head(&[0x81, 5]).unwrap();
        assert!(h.fin && h.opcode == 1 && h.header == 2 && h.len == 5 && h.mask.is_none());
        let h = head(&[0x82, 126, 1, 0]).unwrap();
        assert!(h.header == 4 && h.len == 256);
        let h = head(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert!(h.header == 10 && h.len == 65536);
        let h = head(&[0x89, 0x82, 1, 2, 3, 4]).unwrap();
        assert!(h.opcode == 9 && h.header == 6 && h.mask == Some([1, 2, 3, 4]));
        assert!(head(&[0x82, 126, 1]).is_none());
        assert_eq!(
            split_url("ws://127.0.0.1:80/ws?from=latest").unwrap(),
            ("127.0.0.1:80", "/ws?from=latest")
        );
    }
}
