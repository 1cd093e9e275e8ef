//! Lean frame scanners: what the benchmark needs of each event of an `events` frame
//! (partition, offset, index, producer timestamp), without building a JSON DOM or decoding
//! messages. The JSON walker skips every other value without allocating (strings with
//! `memchr2`); the protobuf walker reads varints and skips length-delimited fields in place.

use memchr::memchr2;

/// One event of an `events` frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ev {
    pub partition: i32,
    pub offset: i64,
    pub index: u32,
    pub timestamp_us: i64,
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string's raw bytes (escapes left as they are); `i` is at its opening quote.
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let k = memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[self.i + k] == b'\\' {
                self.i += k + 2;
            } else {
                let s = &self.b[start..self.i + k];
                self.i += k + 1;
                return Some(s);
            }
        }
    }

    #[inline]
    fn int(&mut self) -> Option<i64> {
        self.ws();
        let neg = self.b.get(self.i) == Some(&b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(c @ b'0'..=b'9') = self.b.get(self.i) {
            v = v.wrapping_mul(10).wrapping_add((c - b'0') as i64);
            self.i += 1;
        }
        (self.i > start).then_some(if neg { -v } else { v })
    }

    /// Skips one value of any kind.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while let Some(c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Walks an object, calling `f(key, self)` with `i` at each value; `f` must consume it.
    fn object(&mut self, mut f: impl FnMut(&'a [u8], &mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let k = self.string()?;
            self.eat(b':')?;
            f(k, self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn event(&mut self) -> Option<Ev> {
        let mut e = Ev::default();
        self.object(|k, p| {
            match k {
                b"partition" => e.partition = p.int()? as i32,
                b"offset" => e.offset = p.int()?,
                b"index" => e.index = p.int()? as u32,
                b"timestamp_us" => e.timestamp_us = p.int()?,
                _ => p.skip()?,
            }
            Some(())
        })?;
        Some(e)
    }
}

/// Calls `f` for each event of a JSON `events` frame and returns their number; `None` for any
/// other frame (or a malformed one). Key order does not matter.
pub fn json_events(b: &[u8], mut f: impl FnMut(Ev)) -> Option<u32> {
    let mut p = P { b, i: 0 };
    let mut n = None;
    p.object(|k, p| {
        if k != b"events" {
            return p.skip();
        }
        let mut count = 0;
        p.eat(b'[')?;
        if p.eat(b']').is_none() {
            loop {
                f(p.event()?);
                count += 1;
                match p.peek()? {
                    b',' => p.i += 1,
                    b']' => {
                        p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        n = Some(count);
        Some(())
    })?;
    n
}

/// The `type` of a JSON frame (`"welcome"`, `"gap"`, ...), and its `cursor` when it has one.
pub fn json_type_and_cursor(b: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut p = P { b, i: 0 };
    let (mut t, mut c) = (None, None);
    p.object(|k, p| {
        match k {
            b"type" => t = Some(p.string()?),
            b"cursor" => c = Some(p.string()?),
            _ => p.skip()?,
        }
        Some(())
    })?;
    Some((t?, c))
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i)?;
        *i += 1;
        v |= ((c & 0x7f) as u64) << shift;
        if c < 0x80 {
            return Some(v);
        }
    }
    None
}

enum Val<'a> {
    Int(u64),
    Len(&'a [u8]),
    Other,
}

/// Iterates the fields of a protobuf message: `f(field number, value)`.
fn fields<'a>(b: &'a [u8], mut f: impl FnMut(u64, Val<'a>) -> Option<()>) -> Option<()> {
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let v = match key & 7 {
            0 => Val::Int(varint(b, &mut i)?),
            1 => {
                i += 8;
                Val::Other
            }
            2 => {
                let n = varint(b, &mut i)? as usize;
                let s = b.get(i..i.checked_add(n)?)?;
                i += n;
                Val::Len(s)
            }
            5 => {
                i += 4;
                Val::Other
            }
            _ => return None,
        };
        if i > b.len() {
            return None;
        }
        f(key >> 3, v)?;
    }
    Some(())
}

/// Like [`json_events`] for a protobuf `ServerFrame` (docs/PROTOCOL.md, `format=protobuf`):
/// `Events` is field 2; each `StreamEvent` holds partition 1, offset 2, index 3 and the `Event`
/// bytes 4, whose `Header` (1) holds `timestamp_us` (2).
pub fn proto_events(b: &[u8], mut f: impl FnMut(Ev)) -> Option<u32> {
    let mut n = None;
    fields(b, |no, v| {
        let (2, Val::Len(events)) = (no, v) else {
            return Some(());
        };
        let mut count = 0;
        fields(events, |no, v| {
            let (2, Val::Len(se)) = (no, v) else {
                return Some(());
            };
            let mut e = Ev::default();
            fields(se, |no, v| {
                match (no, v) {
                    (1, Val::Int(x)) => e.partition = x as i32,
                    (2, Val::Int(x)) => e.offset = x as i64,
                    (3, Val::Int(x)) => e.index = x as u32,
                    (4, Val::Len(event)) => fields(event, |no, v| {
                        if let (1, Val::Len(header)) = (no, v) {
                            fields(header, |no, v| {
                                if let (2, Val::Int(ts)) = (no, v) {
                                    e.timestamp_us = ts as i64;
                                }
                                Some(())
                            })?;
                        }
                        Some(())
                    })?,
                    _ => {}
                }
                Some(())
            })?;
            f(e);
            count += 1;
            Some(())
        })?;
        n = Some(count);
        Some(())
    })?;
    n
}

/// The field number of a protobuf `ServerFrame`'s frame (1 welcome, 2 events, 3 gap, ...), and
/// the cursor (field 2 of a `Welcome`, field 1 of `Events`, `Gap` and `Reconnect`).
pub fn proto_kind_and_cursor(b: &[u8]) -> Option<(u64, Option<&[u8]>)> {
    let mut out = None;
    fields(b, |no, v| {
        if let Val::Len(m) = v {
            let want = if no == 1 { 2 } else { 1 };
            let mut cursor = None;
            if matches!(no, 1..=4) {
                fields(m, |n2, v2| {
                    if let (true, Val::Len(s)) = (n2 == want, v2) {
                        cursor = Some(s);
                    }
                    Some(())
                })?;
            }
            out = Some((no, cursor));
        }
        Some(())
    })?;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dashstream::proto::{server_frame::Frame, Event, Events, Header, ServerFrame, StreamEvent};
    use prost::Message;

    fn event(i: u64, payload: &[u8], content_type: &str) -> Event {
        Event {
            header: Some(Header {
                message_id: vec![i as u8; 16].into(),
                timestamp_us: 1_732_300_000_000_000 + i as i64 * 7,
                tenant_id: format!("tenant-\"{i}\\"),
                thread_id: format!("run-{{[{i}"),
                sequence: i,
                event_type: "token".into(),
                schema_version: 1,
            }),
            payload: payload.to_vec().into(),
            content_type: content_type.into(),
        }
    }

    fn payloads() -> Vec<(&'static [u8], &'static str)> {
        vec![
            (
                br#"{"text":"he said \"}]\" and left","n":[1,{"a":[]}],"x":null}"#,
                "application/json",
            ),
            (
                br#"  [ 1 , "two" , { "three" : 3 } ]  "#,
                "application/json",
            ),
            (
                br#""just a string with \\ and \" and {""#,
                "application/json",
            ),
            (b"-12.5e3", "application/json"),
            (b"\xff\x00binary", "application/octet-stream"),
            (b"{broken", "application/json"),
            (b"", "application/json"),
            (
                "{\"emoji\":\"\u{1F600} caf\u{e9}\",\"u\":\"\\u00e9\"}".as_bytes(),
                "application/json",
            ),
        ]
    }

    #[test]
    fn json_scanner_agrees_with_serde_on_gateway_frames() {
        let mut frame = br#"{"type":"events","cursor":"djF8MDozZjlh","events":["#.to_vec();
        let mut want = Vec::new();
        for (i, (p, ct)) in payloads().into_iter().cycle().take(40).enumerate() {
            let e = event(i as u64, p, ct);
            let (part, off, idx) = (i as i32 % 12, 1000 + i as i64, 1 + i as u32 % 3);
            if i > 0 {
                frame.push(b',');
            }
            frame.extend(dashstream::codec::event_json(part, off, idx, &e));
            want.push(Ev {
                partition: part,
                offset: off,
                index: idx,
                timestamp_us: e.header.unwrap().timestamp_us,
            });
        }
        frame.extend(b"]}");
        // serde agrees that this is what the frame holds
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        let from_serde: Vec<Ev> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Ev {
                partition: e["partition"].as_i64().unwrap() as i32,
                offset: e["offset"].as_i64().unwrap(),
                index: e["index"].as_u64().unwrap() as u32,
                timestamp_us: e["timestamp_us"].as_i64().unwrap(),
            })
            .collect();
        assert_eq!(from_serde, want);
        let mut got = Vec::new();
        assert_eq!(json_events(&frame, |e| got.push(e)), Some(40));
        assert_eq!(got, want);

        // Same frame re-serialized by serde with other whitespace and key order.
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let mut got = Vec::new();
        assert_eq!(json_events(&pretty, |e| got.push(e)), Some(40));
        assert_eq!(got, want);
        let reordered = format!(
            "{{ \"events\" : {} , \"cursor\":\"c\", \"type\" : \"events\" }}",
            serde_json::to_string(&v["events"]).unwrap()
        );
        let mut got = Vec::new();
        assert_eq!(json_events(reordered.as_bytes(), |e| got.push(e)), Some(40));
        assert_eq!(got, want);
    }

    #[test]
    fn json_scanner_other_frames() {
        assert_eq!(
            json_events(br#"{"type":"events","cursor":"x","events":[]}"#, |_| {}),
            Some(0)
        );
        let welcome = br#"{"cursor":"abc","resumed":false,"server":"gw","type":"welcome"}"#;
        assert_eq!(json_events(welcome, |_| {}), None);
        assert_eq!(
            json_type_and_cursor(welcome),
            Some((&b"welcome"[..], Some(&b"abc"[..])))
        );
        let gap = br#"{"cursor":"c2","missed":[{"from":121,"partition":0,"to":4999}],"reason":"retention","type":"gap"}"#;
        assert_eq!(json_events(gap, |_| {}), None);
        assert_eq!(
            json_type_and_cursor(gap),
            Some((&b"gap"[..], Some(&b"c2"[..])))
        );
        assert_eq!(
            json_events(br#"{"type":"events","events":[{"partition":1"#, |_| {}),
            None
        );
        assert_eq!(json_events(b"not json", |_| {}), None);
    }

    #[test]
    fn proto_scanner_agrees_with_prost() {
        let mut events = Vec::new();
        let mut want = Vec::new();
        for (i, (p, ct)) in payloads().into_iter().cycle().take(30).enumerate() {
            let e = event(i as u64, p, ct);
            let ts = e.header.as_ref().unwrap().timestamp_us;
            let (part, off, idx) = (i as i32 % 64, (1i64 << 40) + i as i64, 1 + i as u32);
            events.push(StreamEvent {
                partition: part,
                offset: off,
                index: idx,
                event: e.encode_to_vec().into(),
            });
            want.push(Ev {
                partition: part,
                offset: off,
                index: idx,
                timestamp_us: ts,
            });
        }
        let f = ServerFrame {
            frame: Some(Frame::Events(Events {
                cursor: "djF8".into(),
                events,
            })),
        }
        .encode_to_vec();
        let mut got = Vec::new();
        assert_eq!(proto_events(&f, |e| got.push(e)), Some(30));
        assert_eq!(got, want);
        assert_eq!(proto_kind_and_cursor(&f), Some((2, Some(&b"djF8"[..]))));

        let w = ServerFrame {
            frame: Some(Frame::Welcome(dashstream::proto::Welcome {
                server: "gw".into(),
                cursor: "cur".into(),
                resumed: true,
            })),
        }
        .encode_to_vec();
        assert_eq!(proto_events(&w, |_| {}), None);
        assert_eq!(proto_kind_and_cursor(&w), Some((1, Some(&b"cur"[..]))));
        assert_eq!(proto_events(&f[..f.len() - 3], |_| {}), None);
    }

    /// The scanner and a JSON DOM read the same timestamps; with `--nocapture` it also prints
    /// their cost per event. For the figure: `SCAN_SPEED_ROUNDS=100000 cargo test --release
    /// -p dashstream-ws-load -- --nocapture scan_speed`.
    #[test]
    fn scan_speed() {
        let mut frame = br#"{"type":"events","cursor":"x","events":["#.to_vec();
        for i in 0..10 {
            let pad = "x".repeat(160);
            let payload = format!(r#"{{"thread":17,"seq":5,"pad":"{pad}"}}"#);
            let e = event(i, payload.as_bytes(), "application/json");
            if i > 0 {
                frame.push(b',');
            }
            frame.extend(dashstream::codec::event_json(3, 1000 + i as i64, 1, &e));
        }
        frame.extend(b"]}");
        let n: u32 = std::env::var("SCAN_SPEED_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000);
        let (mut sum, mut dom_sum) = (0i64, 0i64);
        let per_event = |t: std::time::Instant| t.elapsed().as_nanos() as f64 / (n as f64 * 10.0);
        let t = std::time::Instant::now();
        for _ in 0..n {
            json_events(&frame, |e| sum = sum.wrapping_add(e.timestamp_us)).unwrap();
        }
        let scan = per_event(t);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            for e in v["events"].as_array().unwrap() {
                dom_sum = dom_sum.wrapping_add(e["timestamp_us"].as_i64().unwrap());
            }
        }
        let dom = per_event(t);
        assert_eq!(
            sum, dom_sum,
            "the scanner reads the timestamps the DOM holds"
        );
        eprintln!(
            "{} B frame of 10 events: scan {scan:.0} ns/event, serde_json::Value {dom:.0} ns/event ({sum})",
            frame.len()
        );
    }
}
