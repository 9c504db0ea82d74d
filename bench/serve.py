"""Serving throughput on loopback: /v1/classify with request batching against one request at a time, in one run.

Run: .venv/bin/python bench/serve.py [RUN] [--seconds 60] [--clients 8] [--patches 1] [--jobs 3]
RUN (or $NODULEFLOW_BENCH_RUN) is a detector run folder; without one a tiny detector is trained into a temp
folder first (a minute or two), so `make bench` works on a fresh clone. Traffic goes to 127.0.0.1 only.

1. Two servers over the same run, each in its own process on 127.0.0.1 and a free port, one thread each
   (--threads: on this 2-core machine shared with other work, two threads per server fighting for the
   cores made a one-patch call several times slower than one thread, and the timings noisy):
   - batched: the server as `noduleflow serve` runs it, with its request batching (`serve.batching`: up to
     classify_max_batch patches per model call, waiting at most classify_max_wait_ms for more after the first
     request);
   - eager: the baseline, a model served as a PyTorch user first would: eager PyTorch (`--runtime torch`),
     one request per model call (classify_max_batch 1, classify_max_wait_ms 0).
2. `--clients` threads POST one .npy of `--patches` random HU patches (the classifier's patch size) each,
   next request as soon as the last is answered, to one server and then the other, alternating in four
   phases (batched, eager, eager, batched; `--seconds` per server in all) so that a change in this shared
   machine's load falls on both alike. An answer is right when it is 200 with one probability per patch.
3. A few /v1/scans jobs (`--jobs` small synthetic scans) on the batched server: upload, wait, fetch a slice
   and a mask PNG of each.
Prints requests/s and p50/p99 latency per server; ends with `errors N` (both servers and the jobs),
`p99_ms X` (batched) and `ratio_batched_vs_eager Y` (requests/s batched / eager).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _serving import LoadResult, Server, classify_check, detector_run, load, patch_payloads, run_jobs, scan_files

WARMUP_S = 3.0  # per server before timing: first calls allocate and pick kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="detector run folder (default: $NODULEFLOW_BENCH_RUN, else a tiny one)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load per server, in seconds (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--patches", type=int, default=1, help="patches per /v1/classify request (default 1)")
    parser.add_argument("--jobs", type=int, default=3, help="/v1/scans jobs after the load (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server (0: torch's choice)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.clients < 1 or args.patches < 1 or args.jobs < 0:
        parser.error("--seconds must be positive, --clients and --patches at least 1, --jobs not negative")

    with tempfile.TemporaryDirectory(prefix="noduleflow-bench-serve-") as tmp:
        work = Path(tmp)
        run = detector_run(args.run, work)
        scans = scan_files(work, args.jobs) if args.jobs else []
        servers = {
            "batched": Server(run, work / "state-batched", threads=args.threads),
            "eager": Server(
                run,
                work / "state-eager",
                threads=args.threads,
                classify_max_batch=1,
                classify_max_wait_ms=0.0,
                runtime="torch",
            ),
        }
        batched = servers["batched"]
        with batched, servers["eager"]:
            print(
                f"run {run}; {args.clients} clients, {args.patches} patch(es) a request, {args.seconds:g} s per server"
            )
            check = classify_check(args.patches)
            payloads = patch_payloads(batched.port, patches=args.patches)
            results = {name: LoadResult(0.0) for name in servers}
            for server in servers.values():
                load(server.port, payloads, clients=args.clients, seconds=WARMUP_S, check=check)
            for name in ("batched", "eager", "eager", "batched"):
                phase = load(servers[name].port, payloads, clients=args.clients, seconds=args.seconds / 2, check=check)
                results[name].extend(phase, offset=results[name].seconds)
            for name, res in results.items():
                print(
                    f"{name:9s} {res.rate():8.1f} requests/s ({res.rate() * args.patches:.1f} patches/s), "
                    f"p50 {res.percentile(50):.1f} ms, p99 {res.percentile(99):.1f} ms, {len(res.ok)} requests, "
                    f"{res.errors} errors"
                )
            jobs, job_errors = run_jobs(batched.port, scans)
            for job in jobs:
                print(
                    f"job {job['filename']} {job['scan']['shape']}: {len(job['findings'])} findings, "
                    f"{job['seconds']:.1f} s detection, {job['wall_s']:.1f} s from upload to done"
                )
            status = tuple(server.proc.poll() for server in servers.values())
        if any(s is not None for s in status):
            print(f"a server died during the bench (exit {status})")
            job_errors += 1
    errors = sum(res.errors for res in results.values()) + job_errors
    print(f"errors {errors}")
    print(f"p99_ms {results['batched'].percentile(99):.1f}")
    print(f"ratio_batched_vs_eager {results['batched'].rate() / max(results['eager'].rate(), 1e-9):.2f}")


if __name__ == "__main__":
    main()
