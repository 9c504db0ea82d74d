"""What bench/serve.py and bench/soak.py share: a server process on loopback, bounded client loops, the numbers.

Traffic goes to 127.0.0.1 only (`Server` binds nothing else and `load` refuses any other host), and every loop
stops by itself: at a deadline and after a maximum count of requests.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
MAX_REQUESTS_PER_CLIENT = 1_000_000  # a bound beside the deadline: no loop here runs forever
_LAUNCH = """
import json, sys
import uvicorn
from noduleflow.serve.app import create_app
from noduleflow.serve.settings import ServeSettings
kw = json.loads(sys.argv[1]); port = kw.pop("port")
uvicorn.run(create_app(ServeSettings(**kw)), host="127.0.0.1", port=port, log_level="warning")
"""


def detector_run(argv_run: str | None, workdir: Path) -> Path:
    """The run folder to serve: the argument, else $NODULEFLOW_BENCH_RUN, else a tiny detector trained into
    `workdir` (3 half-size synthetic scans, a few seconds of training: serving speed does not depend on accuracy)."""
    given = argv_run or os.environ.get("NODULEFLOW_BENCH_RUN")
    if given:
        return Path(given)
    from noduleflow.recipes.detector import train_detector
    from noduleflow.synth import synthesize

    data = workdir / "train-data"
    synthesize(data, scans=3, seed=2, size="small", scale=0.5, progress=False)
    overrides = {part: {"run.epochs": 1, "data.num_workers": 0} for part in ("segment", "classify", "malignancy")}
    print(f"no detector run given (argument or NODULEFLOW_BENCH_RUN): training a tiny one into {workdir}")
    trained = train_detector(
        data, run="tiny", runs_dir=workdir / "runs", scale=0.02, progress=False, overrides=overrides
    )
    return trained.run_dir


def scan_files(workdir: Path, count: int, seed: int = 5) -> list[Path]:
    """`count` small synthetic scans (half size) written as .mha files to upload."""
    from noduleflow.ct import read_volume, write_volume
    from noduleflow.synth import synthesize

    synthesize(workdir / "scans", scans=count, seed=seed, size="small", scale=0.5, progress=False)
    sources = sorted((workdir / "scans").glob("subset*/*.mhd"))[:count]
    return [write_volume(read_volume(p), workdir / f"scan{k}.mha") for k, p in enumerate(sources)]


class Server:
    """`noduleflow.serve` under uvicorn in its own process on 127.0.0.1 and a free port; a context manager."""

    def __init__(self, run: Path, state: Path, **settings):
        self.run, self.state, self.settings = run, state, settings
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def __enter__(self) -> Server:
        kw = {"run": str(self.run), "state": str(self.state), "port": self.port, **self.settings}
        command = [sys.executable, "-c", _LAUNCH, json.dumps(kw)]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(self.port, "GET", "/readyz", timeout=5)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"the server was not ready within 180 s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down on SIGTERM: the app's lifespan stops its worker
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def rss_mb(self) -> float:
        """Resident memory of the server process (MB), from /proc (psutil is not a dependency)."""
        return proc_rss_mb(self.proc.pid)

    def children_rss_mb(self) -> float:
        """Resident memory of its child processes together (the detection worker), MB."""
        total = 0.0
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                total += proc_rss_mb(int(pid))
        return total


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 60,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:`port` (a fresh connection unless `conn` is given); (status, body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def patch_payloads(port: int, count: int = 16, patches: int = 1, seed: int = 0) -> list[bytes]:
    """`count` .npy bodies of (patches, D, H, W) int16 HU at the served classifier's patch size (GET /v1/model)."""
    status, body = request(port, "GET", "/v1/model")
    if status != 200:
        raise RuntimeError(f"GET /v1/model answered {status}: {body[:200]!r}")
    size = json.loads(body)["patch_size"]
    rng = np.random.default_rng(seed)
    return [npy_bytes(rng.integers(-1000, 400, size=(patches, *size), dtype=np.int16)) for _ in range(count)]


@dataclass
class LoadResult:
    """Requests of one load phase: when each finished (s since the phase began), its latency (ms) and success."""

    seconds: float
    done_at: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)

    def extend(self, other: LoadResult, offset: float = 0.0) -> None:
        self.done_at += [t + offset for t in other.done_at]
        self.latency_ms += other.latency_ms
        self.ok += other.ok
        self.seconds += other.seconds

    @property
    def errors(self) -> int:
        return len(self.ok) - sum(self.ok)

    def rate(self) -> float:
        """Successful requests per second."""
        return sum(self.ok) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float, since: float = 0.0, until: float = float("inf")) -> float:
        rows = zip(self.done_at, self.latency_ms, self.ok, strict=True)
        lat = [ms for t, ms, ok in rows if ok and since <= t < until]
        return float(np.percentile(lat, q)) if lat else float("nan")


def load(
    port: int,
    payloads: list[bytes],
    *,
    clients: int,
    seconds: float,
    rate: float | None = None,
    path: str = "/v1/classify",
    check=None,
) -> LoadResult:
    """`clients` threads POST `payloads` (in turn) to 127.0.0.1:`port``path` for `seconds`, each on one kept-alive
    connection. rate: total requests per second, spread evenly over the clients (None: each sends its next request
    as soon as the last is answered: the capacity). check(status, body) -> bool says whether an answer is right
    (default: status 200). A failed request is counted and its connection opened again."""
    check = check or (lambda status, body: status == 200)
    result = LoadResult(seconds=seconds)
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds
    gap = clients / rate if rate else 0.0

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        next_at = start + gap * k / clients
        done_at, lat, oks = [], [], []
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if gap:
                time.sleep(max(next_at - time.perf_counter(), 0))
                next_at += gap
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            try:
                status, body = request(
                    port,
                    "POST",
                    path,
                    payloads[(k + n) % len(payloads)],
                    {"Content-Type": "application/octet-stream"},
                    conn=conn,
                )
                ok = check(status, body)
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            t1 = time.perf_counter()
            done_at.append(t1 - start)
            lat.append((t1 - t0) * 1000)
            oks.append(ok)
        conn.close()
        with lock:
            result.done_at += done_at
            result.latency_ms += lat
            result.ok += oks

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return result


def classify_check(patches: int):
    """An answer is right when it is 200 with `patches` probabilities in [0, 1]."""

    def check(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        nodule = json.loads(body).get("nodule") or []
        return len(nodule) == patches and all(0.0 <= p <= 1.0 for p in nodule)

    return check


def upload(port: int, path: Path) -> tuple[int, dict]:
    """POST `path` to /v1/scans as the multipart field `file`; (status, JSON answer)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer = request(port, "POST", "/v1/scans", body, headers)
    try:
        return status, json.loads(answer)
    except ValueError:
        return status, {"detail": answer[:200].decode(errors="replace")}


def run_jobs(port: int, scans: list[Path], timeout: float = 600) -> tuple[list[dict], int]:
    """Upload `scans`, wait for their jobs, fetch a slice and a mask PNG of each; (finished jobs, errors)."""
    errors, ids = 0, []
    for path in scans:
        status, answer = upload(port, path)
        if status == 202:
            ids.append((answer["id"], time.perf_counter()))
        else:
            errors += 1
            print(f"  upload of {path.name} answered {status}: {answer.get('detail')}")
    jobs = []
    deadline = time.monotonic() + timeout
    for job_id, sent in ids:
        while time.monotonic() < deadline:
            status, body = request(port, "GET", f"/v1/scans/{job_id}")
            job = json.loads(body) if status == 200 else {"status": "failed", "error": f"GET answered {status}"}
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        else:
            job = {"status": "failed", "error": "not done in time"}
        job["wall_s"] = time.perf_counter() - sent
        if job["status"] != "done":
            errors += 1
            print(f"  job {job_id} {job['status']}: {job.get('error')}")
            continue
        middle = job["scan"]["shape"][0] // 2
        for png in (f"/v1/scans/{job_id}/slices/{middle}.png?window=lung", f"/v1/scans/{job_id}/mask/{middle}.png"):
            status, body = request(port, "GET", png)
            if status != 200 or not body.startswith(b"\x89PNG"):
                errors += 1
                print(f"  GET {png} answered {status}")
        jobs.append(job)
    return jobs, errors


def delete_job(port: int, job_id: str) -> bool:
    status, _ = request(port, "DELETE", f"/v1/scans/{job_id}")
    return status == 204
