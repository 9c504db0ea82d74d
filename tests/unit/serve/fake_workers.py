"""Stand-in worker processes for the runner's tests: start at once, and sleep, crash or answer by the job's input."""

from __future__ import annotations

import os
import time


def worker(conn, run, options):
    conn.send({"ready": True, "runtime": "fake"})
    while True:
        message = conn.recv()
        if message is None:
            return
        name = message["input"]
        if name.endswith("sleep.mha"):
            time.sleep(3600)
        if name.endswith("crash.mha"):
            os._exit(3)
        if name.endswith("bad.mha"):
            conn.send({"error": "bad.mha: is not a scan. Upload another."})
            continue
        conn.send({"scan": {"seriesuid": name}, "candidates": 0, "seconds": 0.01})


def broken(conn, run, options):
    conn.send({"ready": False, "error": "cannot load the detector run: it is broken"})
