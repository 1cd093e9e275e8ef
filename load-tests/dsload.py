"""What every DashStream load-test scenario shares: a Locust user that holds one WebSocket
connection to the gateway (through the load balancer), checks everything it receives, resumes
from its last cursor when the connection ends, and reports to Locust.

Checks, per user and partition: offsets strictly increasing and contiguous (the synthetic
producer writes one event per record, so offset o+1 follows o) unless a `gap` frame names the
missing range, and no event twice. With a filter only the order is checked (the filter skips
offsets) and every event must match it.

Reported as Locust request types (they appear in the report's tables and charts):
  WS  connect        time from the TCP connect to the `welcome` frame
  WS  resume         time from losing the connection to the `welcome` of the resumed one
  WS  frame          one per frame received (length: its bytes)
  WS  event latency  one per event: now minus the producer's `timestamp_us`
  WS  hole / duplicate / filter mismatch / gap   failures, one per finding, named in the text
Counters that thresholds need (holes, duplicates, users that resumed, ...) are written by every
Locust process to `$DSLOAD_OUT/custom-<role>-<pid>.json` when it quits, and summed by the runner.

Settings come from the environment, so that the runner passes them to every worker alike:
DSLOAD_TOKEN (a JWT for every tenant), DSLOAD_QUERY (extra query parameters),
DSLOAD_CONTIGUOUS (0: order checks only), DSLOAD_OUT.
"""

import json
import os
import socket
import threading
import time
import urllib.parse

import gevent
import websocket
from locust import User, events, task
from locust.exception import StopUser

TOKEN = os.environ.get("DSLOAD_TOKEN", "")
OUT = os.environ.get("DSLOAD_OUT", ".")
# DSLOAD_CONTIGUOUS=0: check the order only (a producer whose offsets have holes of its own:
# transactions, records sent to the DLQ, a filter in DSLOAD_QUERY).
CONTIGUOUS = os.environ.get("DSLOAD_CONTIGUOUS", "1") != "0"

# Counters of this process (written at quit; the runner sums the processes').
_lock = threading.Lock()
COUNTERS = {
    "users_started": 0,
    "connect_errors": 0,
    "disconnects": 0,
    "resumes": 0,
    "resume_errors": 0,
    "frames": 0,
    "events": 0,
    "holes": 0,
    "hole_events": 0,
    "duplicates": 0,
    "gaps": 0,
    "filter_mismatches": 0,
    "protocol_errors": 0,
    "max_resume_ms": 0.0,
    "last_resume_at": 0.0,
}
# Per-phase latency samples kept for thresholds a scenario computes itself (slow consumers):
# name -> list of milliseconds (bounded: at most LAT_SAMPLES_MAX per name and process).
LAT_SAMPLES = {}
LAT_SAMPLES_MAX = 200_000
# Scenario-specific lists (filters: per-user findings), merged by concatenation.
LISTS = {}


def count(name, n=1):
    with _lock:
        COUNTERS[name] = COUNTERS.get(name, 0) + n


def maximum(name, v):
    with _lock:
        COUNTERS[name] = max(COUNTERS.get(name, 0), v)


def sample(name, ms):
    with _lock:
        lst = LAT_SAMPLES.setdefault(name, [])
        if len(lst) < LAT_SAMPLES_MAX:
            lst.append(ms)


def append(name, item):
    with _lock:
        LISTS.setdefault(name, []).append(item)


# Set when the test starts stopping: what users receive afterwards is neither counted nor
# reported, so that this process's tallies and Locust's end at the same point.
STOPPING = [False]


@events.test_stopping.add_listener
def _stopping(environment, **_kw):
    STOPPING[0] = True


@events.quitting.add_listener
def _write_custom(environment, **_kw):
    """Every process (local, master, each worker) writes its own tallies when it quits; the
    runner sums the files. (Reports to the master would lose a worker's last seconds: the
    master stops listening half a second after it tells the workers to quit.)"""
    from locust.runners import MasterRunner, WorkerRunner

    role = "worker" if isinstance(environment.runner, WorkerRunner) else "master" if isinstance(environment.runner, MasterRunner) else "local"
    with _lock:
        snap = {"counters": dict(COUNTERS), "samples": LAT_SAMPLES, "lists": LISTS}
    with open(os.path.join(OUT, f"custom-{role}-{os.getpid()}.json"), "w") as f:
        json.dump(snap, f)
    if role != "worker":
        # Locust's statistics as they stand at the very end (its CSV is written a moment
        # earlier and can miss the last second).
        final = {}
        for e in environment.stats.entries.values():
            final[e.name] = {
                "Request Count": e.num_requests,
                "Failure Count": e.num_failures,
                **{f"{p:g}%": e.get_response_time_percentile(p / 100) for p in (50, 66, 75, 90, 95, 99, 99.9, 100)},
            }
        with open(os.path.join(OUT, "locust-final.json"), "w") as f:
            json.dump(final, f)


def ws_base(host):
    """The gateway's /ws URL from Locust's --host (http(s):// or ws(s)://, with or without /ws)."""
    u = host.rstrip("/")
    if u.startswith("http://"):
        u = "ws://" + u[len("http://"):]
    elif u.startswith("https://"):
        u = "wss://" + u[len("https://"):]
    if not u.endswith("/ws"):
        u += "/ws"
    return u


class Stream:
    """What one user has received: per partition the last (offset, index), for the checks."""

    def __init__(self, contiguous):
        self.contiguous = contiguous
        self.last = {}
        self.cursor = None
        self.events = 0

    def gap(self, missed):
        """Applies a gap frame; a list of findings: ("hole", n) when the gap starts after
        events that never came, ("duplicate", 0) when it ends before what was received."""
        found = []
        for m in missed:
            p, frm, to = m["partition"], m.get("from"), m["to"]
            prev = self.last.get(p)
            if prev is not None and frm is not None:
                if frm > prev[0] + 1:
                    found.append(("hole", frm - prev[0] - 1))
                elif frm <= prev[0]:
                    found.append(("duplicate", 0))
            if to is None or to < 0:
                self.last.pop(p, None)
            elif prev is not None and to < prev[0]:
                found.append(("duplicate", 0))
            else:
                self.last[p] = (to, 1 << 30)
        return found

    def event(self, p, o, i):
        """None when in order; else ("hole", n missing) or ("duplicate", 0)."""
        prev = self.last.get(p)
        self.events += 1
        if prev is None:
            self.last[p] = (o, i)
            return None
        po, pi = prev
        if (o, i) <= (po, pi):
            return ("duplicate", 0)
        self.last[p] = (o, i)
        if not self.contiguous:
            return None
        if o == po and i == pi + 1:
            return None
        if o == po + 1 and i == 1:
            return None
        if o > po + 1:
            return ("hole", o - po - 1)
        return ("hole", 1)


class Closed(Exception):
    """The connection ended (a close frame, EOF, a reset)."""


class FrameReader:
    """Reads the server's WebSocket frames from the socket websocket-client opened, in large
    chunks: websocket-client reads each frame's header and payload with separate socket reads
    (three or more system calls per frame), which made one Locust process saturate near 5,000
    frames/s and turned the latency it measured into its own. Server frames are not masked;
    pings are answered (masked) through websocket-client."""

    def __init__(self, ws):
        self.ws = ws
        self.sock = ws.sock
        self.buf = bytearray()
        self.pos = 0
        self.parts = []

    def _fill(self):
        data = self.sock.recv(1 << 18)
        if not data:
            raise Closed("EOF")
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def _frame(self):
        while True:
            b, p = self.buf, self.pos
            n = len(b) - p
            if n >= 2:
                ln = b[p + 1] & 0x7F
                h = 2 if ln < 126 else 4 if ln == 126 else 10
                if n >= h:
                    if ln == 126:
                        ln = int.from_bytes(b[p + 2 : p + 4], "big")
                    elif ln == 127:
                        ln = int.from_bytes(b[p + 2 : p + 10], "big")
                    if n >= h + ln:
                        head = b[p]
                        if head & 0x70 or b[p + 1] & 0x80:
                            raise Closed(f"a server frame with RSV bits or a mask: {head:#x} {b[p + 1]:#x}")
                        payload = bytes(b[p + h : p + h + ln])
                        self.pos = p + h + ln
                        return head & 0x80, head & 0x0F, payload
            self._fill()

    def message(self):
        """The next text or binary message's bytes."""
        while True:
            fin, op, payload = self._frame()
            if op == 0x9:
                self.ws.pong(payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise Closed(f"close {code} {payload[2:].decode('utf-8', 'replace')}")
            self.parts.append(payload)
            if fin:
                msg = b"".join(self.parts) if len(self.parts) > 1 else self.parts[0]
                self.parts = []
                return msg


class StreamUser(User):
    """One WebSocket connection; subclasses set `query`, `contiguous`, and may override
    `on_event` / `reading` to model their clients."""

    abstract = True
    query = "from=latest"
    contiguous = True
    # Seconds without a frame after which the user reconnects (the gateway sends frames at
    # least every few seconds while events flow).
    idle_timeout = 30.0

    def __init__(self, environment):
        super().__init__(environment)
        self.ws_url = ws_base(self.host or "ws://127.0.0.1:8080")
        self.stream = Stream(self.contiguous and CONTIGUOUS)
        self.ws = None
        self.token = TOKEN
        self.lost_at = None
        self.reader = None
        # The replica of each connection, in order (resume storm: who held the killed one).
        self.servers = []

    # --- reporting
    def fire(self, name, ms=0.0, length=0, exc=None):
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    # --- connection
    def url(self):
        q = self.query
        extra = os.environ.get("DSLOAD_QUERY", "")
        if extra:
            q = f"{q}&{extra}" if q else extra
        if self.stream.cursor:
            params = [kv for kv in q.split("&") if kv and not kv.startswith("from=")]
            params.insert(0, "from=" + urllib.parse.quote(self.stream.cursor, safe=""))
            q = "&".join(params)
        return f"{self.ws_url}?{q}"

    def connect(self):
        headers = [f"Authorization: Bearer {self.token}"] if self.token else []
        start = time.time()
        resuming = self.stream.cursor is not None
        try:
            ws = websocket.create_connection(
                self.url(), header=headers, timeout=self.idle_timeout, enable_multithread=False
            )
            first = json.loads(ws.recv())
            if first.get("type") != "welcome":
                raise RuntimeError(f"first frame is not welcome: {first}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then retried
            ms = (time.time() - start) * 1000
            if resuming:
                count("resume_errors")
                self.fire("resume", ms, exc=e)
            else:
                count("connect_errors")
                self.fire("connect", ms, exc=e)
            return False
        self.ws = ws
        self.reader = FrameReader(ws)
        self.servers.append(first.get("server", "?"))
        if resuming and first.get("resumed") is not True:
            self.protocol_error(f"a resume's welcome says resumed={first.get('resumed')!r}")
        if first.get("cursor"):
            self.stream.cursor = first["cursor"]
        now = time.time()
        if resuming and self.lost_at is not None:
            ms = (now - self.lost_at) * 1000
            self.fire("resume", ms)
            count("resumes")
            maximum("max_resume_ms", ms)
            maximum("last_resume_at", now)
            self.lost_at = None
        else:
            self.fire("connect", (now - start) * 1000)
        return True

    def lost(self, why):
        if self.lost_at is None:
            self.lost_at = time.time()
            count("disconnects")
        if self.ws is not None:
            # No close handshake: FrameReader owns the stream now, websocket-client's parser
            # would read from the middle of a frame.
            try:
                self.ws.send_close()
            except Exception:  # noqa: BLE001
                pass
            try:
                self.ws.shutdown()
            except Exception:  # noqa: BLE001
                pass
        self.ws = None
        self.reader = None
        self.on_lost(why)

    def protocol_error(self, what):
        count("protocol_errors")
        self.fire("protocol error", 0, exc=RuntimeError(what))

    def on_lost(self, why):
        pass

    # --- receiving
    def reading(self):
        """False while this user deliberately does not read (slow consumers)."""
        return True

    def on_event(self, ev, latency_ms):
        pass

    def finding(self, kind, n, where):
        if kind == "hole":
            count("holes")
            count("hole_events", n)
            self.fire("hole", 0, exc=RuntimeError(f"hole of {n} before {where}"))
        else:
            count("duplicates")
            self.fire("duplicate", 0, exc=RuntimeError(f"duplicate or reorder at {where}"))

    def handle(self, raw):
        if STOPPING[0]:
            return
        try:
            frame = json.loads(raw)
            t = frame.get("type")
        except (ValueError, AttributeError) as e:
            self.protocol_error(f"a frame that is not a JSON object: {e}")
            return
        count("frames")
        self.fire("frame", 0, len(raw))
        try:
            if t == "events":
                now_us = time.time() * 1_000_000
                for ev in frame["events"]:
                    verdict = self.stream.event(ev["partition"], ev["offset"], ev["index"])
                    lat = (now_us - ev["timestamp_us"]) / 1000.0
                    self.fire("event latency", lat)
                    count("events")
                    self.on_event(ev, lat)
                    if verdict is not None:
                        self.finding(*verdict, f"partition {ev['partition']} offset {ev['offset']} index {ev['index']}")
                self.stream.cursor = frame["cursor"]
            elif t == "gap":
                count("gaps")
                for kind, n in self.stream.gap(frame["missed"]):
                    self.finding(kind, n, f"the gap {frame['missed']}")
                self.stream.cursor = frame["cursor"]
                self.fire("gap", 0, exc=RuntimeError(f"gap ({frame['reason']}): {frame['missed']}"))
            elif t == "reconnect":
                self.stream.cursor = frame["cursor"]
                raise websocket.WebSocketConnectionClosedException(f"reconnect: {frame['reason']}")
            elif t in ("pong", "authenticated"):
                pass
            else:
                self.protocol_error(f"an unexpected frame: {raw[:200]!r}")
        except (KeyError, TypeError, ValueError) as e:
            self.protocol_error(f"a malformed {t} frame ({e!r}): {raw[:200]!r}")

    def on_start(self):
        count("users_started")

    def on_stop(self):
        append("user_servers", {"servers": self.servers, "lost": self.lost_at is not None})
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass

    # One task that never returns: the user reads until Locust stops it (a greenlet kill).
    @task
    def stream_forever(self):
        backoff = 0.1
        while True:
            if STOPPING[0]:
                raise StopUser()
            if self.ws is None:
                if not self.connect():
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
            if not self.reading():
                gevent.sleep(0.2)
                continue
            try:
                raw = self.reader.message()
            except (socket.timeout, TimeoutError):
                self.lost("idle")
                continue
            except Exception as e:  # noqa: BLE001 - closed, reset, killed replica
                self.lost(str(e))
                continue
            try:
                self.handle(raw)
            except websocket.WebSocketConnectionClosedException as e:
                self.lost(str(e))
