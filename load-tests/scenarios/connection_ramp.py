"""connection ramp: users ramp up at DSLOAD_SPAWN_RATE per second to DSLOAD_USERS, hold for
DSLOAD_HOLD seconds, then drop at the same rate. The runner samples each gateway's
connections and resident memory (from /proc) while it runs.

Thresholds (load-tests/runner.py): 0 connect errors, the peak reached DSLOAD_USERS
connections, 0 holes, 0 duplicates."""

import os

from locust import LoadTestShape

from dsload import StreamUser

USERS = int(os.environ.get("DSLOAD_USERS", "5000"))
RATE = float(os.environ.get("DSLOAD_SPAWN_RATE", "100"))
HOLD = float(os.environ.get("DSLOAD_HOLD", "30"))


class RampUser(StreamUser):
    query = "from=latest"


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
