"""connection ramp: users ramp up at DSLOAD_SPAWN_RATE per second to DSLOAD_USERS, hold for
DSLOAD_HOLD seconds, then drop at the same rate. The runner samples each gateway's
connections and resident memory (from /proc) while it runs.

Each user follows one thread (`thread=lt-0`: about 1/50 of the stream), so that thousands of
connections measure the gateways' connection handling rather than the Python load generator's
parsing; order and duplicates are checked (a filter skips offsets, so not contiguity).

Thresholds (load-tests/runner.py): 0 connect errors, the peak reached DSLOAD_USERS
connections, 0 duplicates."""

import os

from locust import LoadTestShape

from dsload import StreamUser

USERS = int(os.environ.get("DSLOAD_USERS", "5000"))
RATE = float(os.environ.get("DSLOAD_SPAWN_RATE", "100"))
HOLD = float(os.environ.get("DSLOAD_HOLD", "30"))


class RampUser(StreamUser):
    query = "from=latest&thread=" + os.environ.get("DSLOAD_THREAD_PREFIX", "lt") + "-0"
    contiguous = False


class RampHoldDrop(LoadTestShape):
    """Up at RATE to USERS, HOLD seconds there, down at RATE to 0, then stop."""

    def tick(self):
        t = self.get_run_time()
        up = USERS / RATE
        if t < up + HOLD:
            return (USERS, RATE)
        if t < up + HOLD + up + 5:
            return (0, RATE) if t > up + HOLD + 1 else (USERS, RATE)
        return None
