"""slow consumers: every tenth user stops reading DSLOAD_SLOW_AT seconds into the run for
DSLOAD_SLOW_FOR seconds (its socket buffers fill, the gateway's outbound budget for it fills,
the gateway switches it to reading Redis or closes it), then reads again and must catch up:
from Redis, or told by a `gap`. The other users' latency is sampled in three phases: before
the stall (baseline), during it (stalled: what the gateway does to everyone else while some
clients do not read), and after it (catch-up: the slow users then parse their backlog in the
same Locust processes, so this phase also measures the load generator; it is reported, not
judged).

Thresholds (load-tests/runner.py): the other users' p99 while the slow ones stall within
--slow-factor of their baseline p99 (plus --slow-slack-ms); the slow users caught up (they
received at least 95% as many events as the others, on average); 0 holes, 0 duplicates, for
slow and fast alike."""

import itertools
import os
import time

from locust import events

from dsload import StreamUser, append, sample

# Seconds after spawning completed.
SLOW_AT = float(os.environ.get("DSLOAD_SLOW_AT", "20"))
SLOW_FOR = float(os.environ.get("DSLOAD_SLOW_FOR", "20"))
_ids = itertools.count()
# Phases count from the end of spawning (the connection ramp is not part of the baseline).
_t0 = time.time()
USERS = []


@events.spawning_complete.add_listener
def _spawned(user_count, **_kw):
    global _t0
    _t0 = time.time()


class MaybeSlowUser(StreamUser):
    query = "from=latest"

    def __init__(self, environment):
        super().__init__(environment)
        self.slow = next(_ids) % 10 == 0
        USERS.append(self)

    def reading(self):
        if not self.slow:
            return True
        t = time.time() - _t0
        return not (SLOW_AT <= t < SLOW_AT + SLOW_FOR)

    def on_event(self, ev, latency_ms):
        if self.slow:
            return
        t = time.time() - _t0
        phase = "baseline" if t < SLOW_AT else "stalled" if t < SLOW_AT + SLOW_FOR else "catchup"
        sample(phase, latency_ms)


@events.test_stopping.add_listener
def _events_per_user(environment, **_kw):
    for u in USERS:
        append("user_events", {"slow": u.slow, "events": u.stream.events})
