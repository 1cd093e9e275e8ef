//! The bytes on the wire: server frames (unmasked, final) with their WebSocket header built
//! in front of the payload, so that one buffer is written to every client as is.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashstream::proto::{server_frame::Frame, Event, Events, ServerFrame, StreamEvent, Welcome};
use prost::Message;

pub struct Wire {
    pub bytes: Bytes,
    pub payload_len: u64,
}

/// Puts an unmasked, final WebSocket frame header (`opcode` 1 text, 2 binary) in front of the
/// payload that `buf` holds after `HEADROOM` reserved bytes.
const HEADROOM: usize = 10;
fn finish_frame(mut buf: BytesMut, opcode: u8) -> Wire {
    let len = buf.len() - HEADROOM;
    let mut h = [0u8; HEADROOM];
    h[0] = 0x80 | opcode;
    let hl = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    buf[HEADROOM - hl..HEADROOM].copy_from_slice(&h[..hl]);
    let mut bytes = buf.freeze();
    bytes.advance(HEADROOM - hl);
    Wire {
        bytes,
        payload_len: len as u64,
    }
}

fn payload_buf(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADROOM + capacity);
    b.put_bytes(0, HEADROOM);
    b
}

/// One stream entry of a read.
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub n: u32,
    pub ev: Bytes,
}

pub fn json_frame(entries: &[(Entry, Event)]) -> Wire {
    let mut b = payload_buf(64 + entries.len() * 512);
    b.put_slice(br#"{"type":"events","cursor":"x","events":["#);
    for (i, (en, e)) in entries.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(&dashstream::codec::event_json(
            en.partition,
            en.offset,
            en.n,
            e,
        ));
    }
    b.put_slice(b"]}");
    finish_frame(b, 1)
}

pub fn proto_frame(entries: &[(Entry, Event)]) -> Wire {
    let f = ServerFrame {
        frame: Some(Frame::Events(Events {
            cursor: "x".into(),
            events: entries
                .iter()
                .map(|(en, _)| StreamEvent {
                    partition: en.partition,
                    offset: en.offset,
                    index: en.n,
                    event: en.ev.clone(),
                })
                .collect(),
        })),
    };
    let mut b = payload_buf(f.encoded_len());
    f.encode(&mut b).expect("BytesMut grows");
    finish_frame(b, 2)
}

pub fn welcome(proto: bool) -> Wire {
    if proto {
        let f = ServerFrame {
            frame: Some(Frame::Welcome(Welcome {
                server: "broadcast-ref".into(),
                cursor: "x".into(),
                resumed: false,
            })),
        };
        let mut b = payload_buf(f.encoded_len());
        f.encode(&mut b).expect("BytesMut grows");
        finish_frame(b, 2)
    } else {
        let mut b = payload_buf(80);
        b.put_slice(br#"{"cursor":"x","resumed":false,"server":"broadcast-ref","type":"welcome"}"#);
        finish_frame(b, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_by_payload_length() {
        for (len, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut b = payload_buf(len);
            b.put_bytes(b'a', len);
            let w = finish_frame(b, 1);
            assert_eq!(w.payload_len as usize, len);
            assert_eq!(w.bytes.len(), header + len);
            assert_eq!(w.bytes[0], 0x81);
        }
        let w = finish_frame(payload_buf(0), 2);
        assert_eq!(&w.bytes[..], &[0x82, 0]);
    }
}
