"""`ServeSettings`: everything `noduleflow serve` can be told, in one frozen dataclass checked on creation."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from noduleflow.errors import ConfigError

TOKEN_ENV = "NODULEFLOW_TOKEN"  # the bearer token when --token is not given (keeps it out of `ps` listings)
RUNTIMES = ("auto", "int8", "onnx", "torch")


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs.

    run: the detector run folder (`noduleflow train detector` output). state: folder for jobs (uploads,
    results, slice caches), kept across restarts; default RUN/serve-state. token: bearer token every
    endpoint but the health checks and the viewer's static files requires (None: open, loopback only).
    max_upload_mb: largest upload accepted (the body is streamed to disk and cut off there).
    max_unzipped_mb: largest total the members of an uploaded zip may unpack to (declared and actual).
    max_zip_entries / max_zip_ratio: zip-bomb limits (members, uncompressed/compressed bytes per member).
    max_queue: queued scan jobs at most; the next upload gets 429. job_timeout_s: a job running longer is
    stopped (its worker process killed) and fails. upload_idle_s: a client that sends no byte of its
    upload for this long is cut off (408), so slow clients cannot hold the server.
    threshold / max_candidates / blob_weight: the Predictor's (segmentation probability that makes a candidate
    voxel; findings kept per scan at most; a blob candidate's score over its P(nodule), 0: none), as
    `noduleflow detect` takes them.
    classify_max_batch / classify_max_wait_ms: /v1/classify requests are batched up to this many patches,
    waiting at most this long for more after the first. runtime: where the U-Net runs (`Predictor`).
    threads: torch/ONNX threads per process (0: the libraries' choice).
    """

    run: Path
    state: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_mb: float = 1024.0
    max_unzipped_mb: float = 4096.0
    max_zip_entries: int = 4096
    max_zip_ratio: float = 200.0
    max_queue: int = 16
    job_timeout_s: float = 600.0
    upload_idle_s: float = 30.0
    classify_max_batch: int = 64
    classify_max_wait_ms: float = 10.0
    threshold: float = 0.2  # detect.predictor.DEFAULT_THRESHOLD (a test keeps them equal)
    max_candidates: int = 100
    blob_weight: float = 0.25  # detect.predictor.DEFAULT_BLOB_WEIGHT (a test keeps them equal)
    runtime: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(
            self, "state", Path(self.state) if self.state is not None else Path(self.run) / "serve-state"
        )
        object.__setattr__(self, "token", self.token or None)
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_unzipped_mb": self.max_unzipped_mb,
            "max_zip_entries": self.max_zip_entries,
            "max_zip_ratio": self.max_zip_ratio,
            "max_queue": self.max_queue,
            "job_timeout_s": self.job_timeout_s,
            "upload_idle_s": self.upload_idle_s,
            "classify_max_batch": self.classify_max_batch,
            "max_candidates": self.max_candidates,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(
                    f"{name} must be positive, got {value}", fix=f"Pass a {name.replace('_', '-')} above 0."
                )
        if self.classify_max_wait_ms < 0 or self.threads < 0:
            raise ConfigError("classify_max_wait_ms and threads must not be negative")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if not 0 <= self.blob_weight <= 1:
            raise ConfigError(f"blob_weight must lie in 0..1 (0: no blob candidates), got {self.blob_weight}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on {self.host} without a token: anyone on the network could upload and read scans",
                fix=f"Pass --token (or set {TOKEN_ENV}), or bind 127.0.0.1.",
            )

    def predictor_options(self) -> dict:
        """Keyword arguments of the detection worker's `Predictor`."""
        return {
            "runtime": self.runtime,
            "threads": self.threads,
            "threshold": self.threshold,
            "max_candidates": self.max_candidates,
            "blob_weight": self.blob_weight,
        }

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_unzipped_bytes(self) -> int:
        return int(self.max_unzipped_mb * 2**20)

    @classmethod
    def from_env(cls, **kwargs) -> ServeSettings:
        """Settings from keyword arguments; the token from $NODULEFLOW_TOKEN when not given."""
        if not kwargs.get("token"):
            kwargs["token"] = os.environ.get(TOKEN_ENV) or None
        return cls(**kwargs)


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
