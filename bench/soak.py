"""Soak on loopback: the server under steady /v1/classify load at its measured capacity for 10 minutes, with
scan jobs coming and going; does its memory stay flat and its latency stay put?

Run: .venv/bin/python bench/soak.py [RUN] [--minutes 10] [--clients 8] [--load 1.0] [--job-every 60]
RUN (or $NODULEFLOW_BENCH_RUN) is a detector run folder; without one a tiny detector is trained into a temp
folder first. Traffic goes to 127.0.0.1 only; every loop stops at the soak's end.

1. One server (batching as configured by default, one torch thread: see bench/serve.py) in its own process.
2. Warm-up: `--clients` clients send as fast as answered for `--warmup` seconds; their requests/s is the
   capacity. The server's resident memory (RSS, from /proc) is read after it: the start.
3. Soak: the same clients, paced to `--load` x the capacity in all, minute by minute for `--minutes`; every
   `--job-every` seconds a small scan is uploaded, its job awaited, a slice and a mask PNG fetched, and the
   job deleted (so that disk and the job list do not grow). Each minute prints requests/s, p99 and RSS.
Prints RSS and p99 at the start and the end; ends with `errors N` and `rss_growth_mb X` (end - start, the
server process; its detection worker's RSS is printed beside it).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _serving import (
    LoadResult,
    Server,
    classify_check,
    delete_job,
    detector_run,
    load,
    patch_payloads,
    run_jobs,
    scan_files,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="detector run folder (default: $NODULEFLOW_BENCH_RUN, else a tiny one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--load", type=float, default=1.0, help="fraction of the measured capacity to send")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of warm-up measuring the capacity")
    parser.add_argument("--job-every", type=float, default=60.0, help="seconds between scan jobs in the soak")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (0: torch's choice)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.clients < 1 or not 0 < args.load <= 2 or args.warmup <= 0 or args.job_every <= 0:
        parser.error("--minutes, --warmup and --job-every must be positive, --clients at least 1, --load in (0, 2]")

    with tempfile.TemporaryDirectory(prefix="noduleflow-bench-soak-") as tmp:
        work = Path(tmp)
        run = detector_run(args.run, work)
        scans = scan_files(work, 1)
        with Server(run, work / "state", threads=args.threads) as server:
            errors, growth = _soak(server, scans, args)
            if server.proc.poll() is not None:
                print(f"the server died during the soak (exit {server.proc.returncode}):\n{server.log_tail()}")
                errors.append(1)
    print(f"errors {sum(errors)}")
    print(f"rss_growth_mb {growth:.1f}")


def _soak(server: Server, scans: list[Path], args) -> tuple[list[int], float]:
    """Warm-up, then the paced soak, printing as it goes; (error counts, the server's RSS growth in MB)."""
    check = classify_check(1)
    payloads = patch_payloads(server.port)
    warm = load(server.port, payloads, clients=args.clients, seconds=args.warmup, check=check)
    capacity = warm.rate()
    if capacity <= 0:
        raise SystemExit(f"the server answered no request right during the warm-up ({warm.errors} errors)")
    rate = args.load * capacity
    rss_start, worker_start = server.rss_mb(), server.children_rss_mb()
    print(
        f"capacity {capacity:.1f} requests/s over {args.warmup:g} s ({args.clients} clients, "
        f"p99 {warm.percentile(99):.1f} ms); soaking at {rate:.1f} requests/s for {args.minutes:g} min"
    )
    print(f"start: rss {rss_start:.1f} MB (detection worker {worker_start:.1f} MB)")

    stop_at = time.monotonic() + args.minutes * 60
    job_errors, jobs_done = [0], [0]

    def jobs() -> None:  # a scan job every --job-every seconds until the soak ends
        next_at = time.monotonic() + args.job_every / 2
        while next_at < stop_at:
            time.sleep(max(next_at - time.monotonic(), 0))
            done, failed = run_jobs(server.port, scans, timeout=max(stop_at - time.monotonic(), 30))
            job_errors[0] += failed + sum(not delete_job(server.port, j["id"]) for j in done)
            jobs_done[0] += len(done)
            next_at += args.job_every

    job_thread = threading.Thread(target=jobs, daemon=True)
    job_thread.start()
    soak, minute, first_p99 = LoadResult(0.0), 0, None
    while (left := stop_at - time.monotonic()) > 1:
        part = load(server.port, payloads, clients=args.clients, seconds=min(60.0, left), rate=rate, check=check)
        soak.extend(part, offset=soak.seconds)
        minute += 1
        first_p99 = part.percentile(99) if first_p99 is None else first_p99
        print(
            f"minute {minute}: {part.rate():.1f} requests/s, p50 {part.percentile(50):.1f} ms, "
            f"p99 {part.percentile(99):.1f} ms, {part.errors} errors, rss {server.rss_mb():.1f} MB "
            f"(worker {server.children_rss_mb():.1f} MB)"
        )
    job_thread.join(timeout=120)
    rss_end, worker_end = server.rss_mb(), server.children_rss_mb()
    last_p99 = soak.percentile(99, since=max(soak.seconds - 60, 0))
    print(f"{len(soak.ok)} requests in {soak.seconds / 60:.1f} min ({soak.rate():.1f}/s), {jobs_done[0]} scan jobs")
    print(f"start: rss {rss_start:.1f} MB, p99 {first_p99:.1f} ms (first minute)")
    print(
        f"end: rss {rss_end:.1f} MB, p99 {last_p99:.1f} ms (last minute); "
        f"detection worker {worker_start:.1f} -> {worker_end:.1f} MB"
    )
    return [warm.errors, soak.errors, job_errors[0]], rss_end - rss_start


if __name__ == "__main__":
    main()
