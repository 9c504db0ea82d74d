"""`ClassifyBatcher`: concurrent /v1/classify requests share one model call.

Each request's (N, D, H, W) patches wait in a queue; one thread takes the first, then more until
`max_batch` patches are gathered or `max_wait_ms` has passed since the first, runs the model once on all of
them and hands each request its own rows. A request that would overflow the batch waits for the next one (a
single request larger than `max_batch` runs alone). Batching costs a request at most `max_wait_ms` and saves
a model call per request joined: what the Predictor's classifier pays per call (weights, threads) is paid
once per batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np

log = logging.getLogger("noduleflow")
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # (N, D, H, W) -> (N,), (N,) | None


class ClassifyBatcher:
    """Batches calls of `score` (module docstring); `on_batch(patches, requests)` is told each batch's size."""

    def __init__(self, score: Scorer, *, max_batch: int, max_wait_ms: float, on_batch: Callable[[int, int], None] | None = None):
        self.score, self.max_batch, self.max_wait = score, int(max_batch), max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._held = None  # a request that did not fit the last batch
        self._thread = threading.Thread(target=self._loop, name="noduleflow-classify", daemon=True)
        self._thread.start()

    def submit(self, patches: np.ndarray) -> Future:
        """A future of (P(nodule) (N,), P(malignant) (N,) or None) for (N, D, H, W) HU patches."""
        future: Future = Future()
        self._queue.put((np.asarray(patches), future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            batch, count = [first], len(first[0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0)) if self.max_wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._run(batch, count)
                    return
                if count + len(item[0]) > self.max_batch:
                    self._held = item
                    break
                batch.append(item)
                count += len(item[0])
            self._run(batch, count)

    def _run(self, batch: list, count: int) -> None:
        futures = [f for _, f in batch]
        try:
            patches = np.concatenate([p for p, _ in batch]) if len(batch) > 1 else batch[0][0]
            nodule, malignant = self.score(patches)
        except Exception as err:  # every waiting request gets the error, the thread lives on
            log.exception("classifying a batch of %d patches failed", count)
            for f in futures:
                f.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(count, len(batch))
        start = 0
        for p, f in batch:
            end = start + len(p)
            f.set_result((nodule[start:end], None if malignant is None else malignant[start:end]))
            start = end
