"""Scan jobs run one at a time in a worker process, fed by a queue: `DetectionRunner`.

Why a process and not a thread: the Predictor cannot be interrupted mid-scan, and a job must stop at
`job_timeout_s` (and on DELETE); a process can be killed, and a crash in it (a native library, memory)
fails one job instead of the server. The worker loads its own Predictor once and is reused for every job;
it is started again (its start-up cost once more, logged) only after a kill or a crash.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue
import threading
import time
import warnings
from pathlib import Path

from noduleflow.serve.jobs import JobStore

log = logging.getLogger("noduleflow")
_POLL_S = 0.1


def worker_main(conn, run: str, options: dict) -> None:
    """The worker process: load a Predictor (`options`: its keyword arguments), then answer {"folder", "input"}
    messages with `run_job`'s dict."""
    from noduleflow.detect import Predictor

    try:
        predictor = Predictor.from_run(run, **options)
    except Exception as err:  # reported to the server, which fails jobs with it
        conn.send({"ready": False, "error": f"cannot load the detector run {run}: {err}"})
        return
    conn.send({"ready": True, "runtime": predictor.runtime})
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        conn.send(run_job(predictor, Path(message["folder"]), message["input"]))


def run_job(predictor, folder: Path, scan: str) -> dict:
    """Read `folder`/`scan`, detect, write result.json + the slice caches; returns what job.json records
    (or {"error": message} for a scan that cannot be read)."""
    from noduleflow.ct import read_volume
    from noduleflow.errors import NoduleflowError
    from noduleflow.files import atomic_write
    from noduleflow.serve.render import save_scan

    try:
        volume = read_volume(folder / scan)
    except NoduleflowError as err:  # the client's scan: say what is wrong, without the server's folders
        return {"error": err.message.replace(f"{folder}/", "")}
    except Exception as err:
        log.exception("reading %s failed", folder / scan)
        return {"error": f"the scan could not be read ({type(err).__name__}: {err})".replace(f"{folder}/", "")}
    with warnings.catch_warnings(record=True):  # an empty scan's warning is in result.warnings already
        warnings.simplefilter("always")
        result = predictor.predict(volume)
    save_scan(folder, volume.hu, getattr(result, "candidate_mask", None))
    findings = [dict(f.to_dict(), center_irc=[float(v) for v in f.center_irc]) for f in result.findings]
    atomic_write(folder / "result.json", json.dumps({"findings": findings, "warnings": list(result.warnings)}))
    scan_info = {"seriesuid": volume.series_uid, "shape": list(volume.shape), "spacing_xyz": volume.spacing_xyz.tolist(),
                 "origin_xyz": volume.origin_xyz.tolist()}
    return {"scan": scan_info, "candidates": int(result.candidates), "seconds": float(result.seconds)}


class DetectionRunner:
    """One thread that takes job ids from a queue and runs each in the worker process (module docstring).

    `pending` holds the ids waiting (what the queue-length limit counts); `current` the one running.
    `target(conn, run, predictor_options)` is the worker process's function (`worker_main`; tests pass others).
    """

    def __init__(self, settings, store: JobStore, on_finish=None, target=worker_main):
        self.settings, self.store, self.on_finish, self.target = settings, store, on_finish, target
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self.pending: set[str] = set()
        self.current: str | None = None
        self._cancel: str | None = None
        self._cancelled = threading.Event()
        self._stopping = False
        self._proc = None
        self._conn = None
        self.worker_error: str | None = None
        self.runtime: str | None = None  # where the worker's U-Net runs, as it reported
        self.ready = threading.Event()
        self.startup_seconds: list[float] = []
        self._thread = threading.Thread(target=self._loop, name="noduleflow-jobs", daemon=True)

    def start(self, job_ids: list[str] = ()) -> None:
        for job_id in job_ids:
            self.submit(job_id)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        with self._lock:
            self.pending.add(job_id)
        self._queue.put(job_id)

    def queued(self) -> int:
        with self._lock:
            return len(self.pending)

    def cancel(self, job_id: str, wait_s: float = 30.0) -> None:
        """Stop `job_id`: drop it from the queue, or kill the worker when it runs it (waits until it is killed)."""
        with self._lock:
            self.pending.discard(job_id)
            running = self.current == job_id
            if running:
                self._cancelled.clear()
                self._cancel = job_id
        if running:
            self._cancelled.wait(wait_s)

    def stop(self) -> None:
        """Stop the thread and the worker; a job running now stays "running" on disk and runs again on restart."""
        self._stopping = True
        self._queue.put(None)
        self._kill()
        self._thread.join(timeout=10)

    # ---- the runner thread ----

    def _loop(self) -> None:
        self._spawn()
        self.ready.set()
        while not self._stopping:
            job_id = self._queue.get()
            if job_id is None or self._stopping:
                return
            with self._lock:
                if job_id not in self.pending:
                    continue  # deleted while queued
                self.pending.discard(job_id)
                self.current = job_id
            try:
                self._run(job_id)
            except Exception:  # the runner must outlive any one job
                log.exception("job %s failed in the runner", job_id)
                self._finish(job_id, error="internal error while running the job; see the server log")
            finally:
                with self._lock:
                    self.current, self._cancel = None, None

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job["status"] not in ("queued", "running"):
            return
        job = self.store.update(job_id, status="running", started=time.time(), attempts=job.get("attempts", 0) + 1)
        if job is None:
            return
        if self._conn is None:
            self._spawn()
        if self._conn is None:
            self._finish(job_id, error=self.worker_error or "the detection worker could not start")
            return
        start, conn, proc = time.monotonic(), self._conn, self._proc
        try:
            conn.send({"folder": str(self.store.root / job_id), "input": job["input"]})
            while not conn.poll(_POLL_S):
                if self._stopping:
                    return
                if self._cancel == job_id:
                    self._kill()
                    self._cancelled.set()  # the DELETE may remove the folder now; a fresh worker starts meanwhile
                    self._restart()
                    return
                if time.monotonic() - start > self.settings.job_timeout_s:
                    self._restart()
                    self._finish(job_id, error=f"the job took longer than the server's limit of {self.settings.job_timeout_s:g} s "
                                               "and was stopped; retry a smaller scan or ask the operator for a larger --job-timeout")
                    return
                if not proc.is_alive():
                    break
            reply = conn.recv()
        except (EOFError, OSError):
            if self._stopping:
                return
            proc.join(5)
            code = proc.exitcode
            self._restart()
            self._finish(job_id, error=f"the detection worker crashed on this scan (exit code {code}); the server restarted it")
            return
        if "error" in reply:
            self._finish(job_id, error=reply["error"])
        else:
            self._finish(job_id, **reply)

    def _finish(self, job_id: str, *, error: str | None = None, **fields) -> None:
        job = self.store.update(job_id, status="failed" if error else "done", error=error, finished=time.time(), **fields)
        if job is not None and self.on_finish is not None:
            self.on_finish(job)

    def _spawn(self) -> None:
        start = time.monotonic()
        ctx = mp.get_context("spawn")  # never fork a process that holds torch's and ONNX Runtime's threads
        parent, child = ctx.Pipe()
        s = self.settings
        proc = ctx.Process(target=self.target, args=(child, str(s.run), s.predictor_options()), name="noduleflow-worker", daemon=True)
        self._proc = proc  # so that `stop` can kill it while it starts
        try:
            proc.start()
            child.close()
            hello = parent.recv()
        except (EOFError, OSError):
            hello = {"ready": False, "error": f"the detection worker exited while starting (exit code {proc.exitcode})"}
        except Exception as err:  # cannot start a process at all (resources, a main module without a __main__ guard)
            hello = {"ready": False, "error": f"the detection worker could not start ({type(err).__name__}: {str(err).strip()[:200]})"}
        if self._stopping:
            hello = {"ready": False, "error": "the server is stopping"}
        if not hello.get("ready"):
            self.worker_error = hello.get("error")
            if not self._stopping:
                log.error("detection worker failed to start: %s", self.worker_error)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            parent.close()
            self._proc, self._conn = None, None
            return
        self._conn, self.worker_error, self.runtime = parent, None, hello.get("runtime")
        self.startup_seconds.append(time.monotonic() - start)
        log.info("detection worker started in %.1f s", self.startup_seconds[-1])

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(10)
        if conn is not None:
            conn.close()

    def _restart(self) -> None:
        self._kill()
        if not self._stopping:
            self._spawn()
