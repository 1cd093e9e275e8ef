"""resume storm: N users connected through the load balancer; the runner SIGKILLs the gateway
replica holding the most connections mid-run, and every user it held reconnects through the
load balancer with its last cursor (load-tests/dsload.py does that for any lost connection).

Thresholds (load-tests/runner.py): every user that lost its connection resumed, 0 holes,
0 duplicates, the time from the kill until the last resume under --max-resume-s."""

from dsload import StreamUser


class ResumingUser(StreamUser):
    query = "from=latest"
