"""Unit tests of the load tests' own checks (`load-tests/run.sh selftest`): the per-partition
order and hole logic with gap frames, and the WebSocket frame reader, on made-up input. The
real-service runs are the scenarios themselves."""

import os
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dsload import Closed, FrameReader, Stream  # noqa: E402


class StreamChecks(unittest.TestCase):
    def test_consecutive_events_and_batches_pass(self):
        s = Stream(contiguous=True)
        for o, i in [(10, 1), (11, 1), (11, 2), (12, 1)]:
            self.assertIsNone(s.event(0, o, i))

    def test_a_missing_offset_is_a_hole_and_a_repeat_a_duplicate(self):
        s = Stream(contiguous=True)
        s.event(0, 10, 1)
        self.assertEqual(s.event(0, 13, 1), ("hole", 2))
        self.assertEqual(s.event(0, 13, 1), ("duplicate", 0))
        self.assertEqual(s.event(0, 12, 1), ("duplicate", 0))
        self.assertIsNone(s.event(1, 500, 1), "partitions are independent")

    def test_order_only_without_contiguity(self):
        s = Stream(contiguous=False)
        s.event(0, 10, 1)
        self.assertIsNone(s.event(0, 20, 1))
        self.assertEqual(s.event(0, 15, 1), ("duplicate", 0))

    def test_a_gap_explains_exactly_its_range(self):
        s = Stream(contiguous=True)
        s.event(0, 100, 1)
        self.assertEqual(s.gap([{"partition": 0, "from": 101, "to": 4999}]), [])
        self.assertIsNone(s.event(0, 5000, 1))

    def test_a_gap_that_starts_late_leaves_a_hole_and_one_that_ends_early_a_duplicate(self):
        s = Stream(contiguous=True)
        s.event(0, 100, 1)
        self.assertEqual(s.gap([{"partition": 0, "from": 121, "to": 4999}]), [("hole", 20)])
        s = Stream(contiguous=True)
        s.event(0, 100, 1)
        self.assertEqual(s.gap([{"partition": 0, "from": 90, "to": 95}]), [("duplicate", 0), ("duplicate", 0)])

    def test_a_reset_gap_rebases_the_partition(self):
        s = Stream(contiguous=True)
        s.event(0, 100, 1)
        self.assertEqual(s.gap([{"partition": 0, "from": 101, "to": -1}]), [])
        self.assertIsNone(s.event(0, 0, 1))


class FakeSocket:
    def __init__(self, chunks):
        self.chunks = list(chunks)

    def recv(self, _n):
        return self.chunks.pop(0) if self.chunks else b""


class FakeWs:
    def __init__(self, chunks):
        self.sock = FakeSocket(chunks)
        self.pongs = []

    def pong(self, payload):
        self.pongs.append(payload)


def frame(op, payload, fin=True):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class FrameReading(unittest.TestCase):
    def test_frames_of_every_length_split_anywhere(self):
        msgs = [b"a" * 5, b"b" * 300, b"c" * 70000]
        wire = b"".join(frame(1, m) for m in msgs)
        chunks = [wire[i : i + 7] for i in range(0, len(wire), 7)]
        r = FrameReader(FakeWs(chunks))
        self.assertEqual([r.message() for _ in msgs], msgs)

    def test_fragments_with_a_ping_between_and_a_close(self):
        ws = FakeWs([frame(1, b"hel", fin=False) + frame(9, b"p") + frame(0, b"lo") + frame(8, struct.pack(">H", 4012) + b"draining")])
        r = FrameReader(ws)
        self.assertEqual(r.message(), b"hello")
        self.assertEqual(ws.pongs, [b"p"])
        with self.assertRaisesRegex(Closed, "4012"):
            r.message()

    def test_a_masked_server_frame_and_eof_end_the_connection(self):
        r = FrameReader(FakeWs([bytes([0x81, 0x85]) + b"\0\0\0\0" + b"hello"]))
        with self.assertRaises(Closed):
            r.message()
        with self.assertRaisesRegex(Closed, "EOF"):
            FrameReader(FakeWs([])).message()


if __name__ == "__main__":
    unittest.main()
