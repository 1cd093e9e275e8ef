"""filters and tenants: users with a tenant, thread or type filter, and users whose token
grants one tenant only, each get exactly their subset. One reference user per Locust process
reads everything; at the end every filtered user's events are compared, per partition over the
events produced while both were connected (by the producer's timestamp, 3 s inside each
end), with the reference's events that match its filter: none missing, none extra. A tenant-scoped user also tries to widen its scope (another tenant in the query) and
must get 403.

DSLOAD_TENANT_TOKENS: a JSON object tenant -> token granting only that tenant (the runner
mints them; without it the tenant-scoped users are skipped). The producer's values: tenants
tenant-0..3, threads <prefix>-0..49 (DSLOAD_THREAD_PREFIX), types node_start, token,
quality_score.

Thresholds (load-tests/runner.py): 0 missing, 0 extra, 0 widened scopes, 0 holes in the
reference, 0 duplicates."""

import itertools
import json
import os
import time
import urllib.parse

import websocket
from locust import events

from dsload import TOKEN, StreamUser, append, count, ws_base

TENANT_TOKENS = json.loads(os.environ.get("DSLOAD_TENANT_TOKENS", "{}") or "{}")
THREAD_PREFIX = os.environ.get("DSLOAD_THREAD_PREFIX", "lt")
TENANTS = ["tenant-0", "tenant-1", "tenant-2", "tenant-3"]
TYPES = ["node_start", "token", "quality_score"]

REFERENCE = {}  # (partition, offset, index) -> (tenant, thread, type, timestamp_us)
REF_SINCE = []  # when the reference user's first connection was welcomed (µs)
FILTERED = []  # the users to compare at the end
STOPPED_AT = []  # when the test started stopping (µs)
SLACK_US = 3_000_000
_ids = itertools.count()


class ReferenceUser(StreamUser):
    """Everything, for the comparison."""

    fixed_count = 1
    query = "from=latest"

    def connect(self):
        ok = super().connect()
        if ok and not REF_SINCE:
            REF_SINCE.append(time.time() * 1e6)
        return ok

    def on_event(self, ev, latency_ms):
        REFERENCE[(ev["partition"], ev["offset"], ev["index"])] = (
            ev["tenant"],
            ev["thread"],
            ev["event_type"],
            ev["timestamp_us"],
        )


class FilteredUser(StreamUser):
    contiguous = False

    def __init__(self, environment):
        super().__init__(environment)
        i = next(_ids)
        kinds = ["tenant", "thread", "type"] + (["scoped"] if TENANT_TOKENS else [])
        self.kind = kinds[i % len(kinds)]
        if self.kind == "tenant":
            self.want = {TENANTS[i % 4], TENANTS[(i + 1) % 4]}
            self.query = "from=latest&tenant=" + ",".join(sorted(self.want))
        elif self.kind == "thread":
            self.want = {f"{THREAD_PREFIX}-{(i * 7 + k) % 50}" for k in range(3)}
            self.query = "from=latest&thread=" + ",".join(sorted(self.want))
        elif self.kind == "type":
            self.want = {TYPES[i % 3]}
            self.query = "from=latest&type=" + TYPES[i % 3]
        else:
            tenant = TENANTS[i % 4]
            self.want = {tenant}
            self.token = TENANT_TOKENS[tenant]
            self.query = "from=latest"
        self.got = {}  # (p, o, i) -> True
        self.since_us = None  # when its first connection was welcomed
        FILTERED.append(self)

    def connect(self):
        ok = super().connect()
        if ok and self.since_us is None:
            self.since_us = time.time() * 1e6
        return ok

    def field(self, ev):
        return {"tenant": ev["tenant"], "scoped": ev["tenant"], "thread": ev["thread"], "type": ev["event_type"]}[self.kind]

    def on_start(self):
        super().on_start()
        if self.kind == "scoped":
            other = next(t for t in TENANTS if t not in self.want)
            url = f"{ws_base(self.host)}?from=latest&tenant={urllib.parse.quote(other)}"
            try:
                ws = websocket.create_connection(url, header=[f"Authorization: Bearer {self.token}"], timeout=10)
                ws.close()
                count("widened_scopes")
                self.fire("widen scope", 0, exc=RuntimeError(f"a {sorted(self.want)} token read {other}"))
            except websocket.WebSocketBadStatusException as e:
                if e.status_code == 403:
                    count("widen_refused")
                else:
                    count("widened_scopes")
                    self.fire("widen scope", 0, exc=RuntimeError(f"expected 403, got {e.status_code}"))

    def on_event(self, ev, latency_ms):
        key = (ev["partition"], ev["offset"], ev["index"])
        if self.field(ev) not in self.want:
            count("filter_mismatches")
            self.fire("filter mismatch", 0, exc=RuntimeError(f"{self.kind} {self.field(ev)!r} not in {sorted(self.want)}"))
        self.got[key] = True


@events.test_stopping.add_listener
def _stopping(environment, **_kw):
    STOPPED_AT.append(time.time() * 1e6)


@events.test_stop.add_listener
def _compare(environment, **_kw):
    """Every reference event produced while both this user and the reference were connected
    (SLACK_US inside each end) that matches the user's filter must be in what it got, and
    nothing it got may be outside its filter."""
    end = (STOPPED_AT[0] if STOPPED_AT else time.time() * 1e6) - SLACK_US
    for u in FILTERED:
        if u.since_us is None or not REF_SINCE:
            count("filter_users_not_compared")
            continue
        begin = max(u.since_us, REF_SINCE[0]) + SLACK_US
        missing = extra = compared = 0
        for key, (tenant, thread, typ, ts) in REFERENCE.items():
            if not begin <= ts <= end:
                continue
            value = {"tenant": tenant, "scoped": tenant, "thread": thread, "type": typ}[u.kind]
            if value in u.want:
                compared += 1
                if key not in u.got:
                    missing += 1
            elif key in u.got:
                extra += 1
        count("filter_missing", missing)
        count("filter_extra", extra)
        count("filter_compared", compared)
        append("filter_users", {"kind": u.kind, "want": sorted(u.want), "got": len(u.got), "compared": compared, "missing": missing, "extra": extra})
