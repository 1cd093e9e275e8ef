"""fan-out: N users on `from=latest`, each checking the full stream (load-tests/dsload.py).

Thresholds (load-tests/runner.py): 0 holes, 0 duplicates, 0 connect errors, event latency p99
under --max-p99-ms."""

from dsload import StreamUser


class FanOutUser(StreamUser):
    query = "from=latest"
