"""The job store: one folder per scan job under STATE/jobs/<id>/, so a restarted server loses nothing.

A job folder holds `upload/` (the file as uploaded) and `scan/` (a zip's members), `job.json` (status and the
facts the API reports, rewritten atomically on every change), and once done `result.json` (findings),
`scan.npy` and `mask.npy` (`render`). A folder without `job.json` is an upload that never got its 202 (the
server stopped while receiving it) and is removed on start-up; jobs left "queued" or "running" are queued
again, oldest first; "done" and "failed" ones are served as they are.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from noduleflow.files import atomic_write

log = logging.getLogger("noduleflow")
STATES = ("queued", "running", "done", "failed")
_ID_CHARS = set("0123456789abcdef")


class JobStore:
    """Jobs on disk (module docstring). Thread-safe: one lock guards every job.json read-modify-write."""

    def __init__(self, state: Path):
        self.root = Path(state) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path | None:
        """The folder of `job_id`, or None when the id is malformed (never a path a client chose) or unknown."""
        if len(job_id) != 32 or not set(job_id) <= _ID_CHARS:
            return None
        folder = self.root / job_id
        return folder if (folder / "job.json").is_file() else None

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (empty, created) folder; the job exists once `create` writes its job.json."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        (folder / "upload").mkdir(parents=True)
        return job_id, folder

    def create(self, job_id: str, filename: str, scan_path: Path) -> dict:
        """Record a queued job whose scan lies at `scan_path` (inside its folder)."""
        folder = self.root / job_id
        job = {"id": job_id, "status": "queued", "filename": filename, "created": time.time(), "started": None,
               "finished": None, "error": None, "input": scan_path.relative_to(folder).as_posix(), "scan": None,
               "candidates": None, "seconds": None, "attempts": 0}
        atomic_write(folder / "job.json", json.dumps(job))
        return job

    def get(self, job_id: str) -> dict | None:
        folder = self.folder(job_id)
        if folder is None:
            return None
        try:
            return json.loads((folder / "job.json").read_text())
        except (OSError, ValueError):  # deleted meanwhile
            return None

    def update(self, job_id: str, **fields) -> dict | None:
        """Set `fields` in the job's job.json (atomically); None when the job is gone (deleted)."""
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return None
            job.update(fields)
            atomic_write(self.root / job_id / "job.json", json.dumps(job))
            return job

    def result(self, job_id: str) -> dict | None:
        folder = self.folder(job_id)
        try:
            return None if folder is None else json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            return None

    def all(self) -> list[dict]:
        """Every job, newest first."""
        jobs = [job for path in self.root.iterdir() if (job := self.get(path.name)) is not None]
        return sorted(jobs, key=lambda j: -j["created"])

    def delete(self, job_id: str) -> bool:
        folder = self.folder(job_id)
        if folder is None:
            return False
        with self._lock:
            (folder / "job.json").unlink(missing_ok=True)  # gone for readers at once, then its files
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def discard(self, folder: Path) -> None:
        """Remove a folder from `new_folder` whose upload was refused."""
        if folder.parent == self.root:
            shutil.rmtree(folder, ignore_errors=True)

    def recover(self) -> list[str]:
        """Start-up: remove folders without job.json; requeue unfinished jobs. Returns their ids, oldest first."""
        pending = []
        for path in self.root.iterdir():
            if not (path / "job.json").is_file():
                log.info("removing %s: an upload that was never accepted", path)
                shutil.rmtree(path, ignore_errors=True)
                continue
            job = self.get(path.name)
            if job is None:
                continue
            if job["status"] in ("queued", "running"):
                pending.append(job)
                if job["status"] == "running":
                    self.update(job["id"], status="queued", started=None)
        return [job["id"] for job in sorted(pending, key=lambda j: j["created"])]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        counts = dict.fromkeys(STATES, 0)
        for job in self.all():
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        return counts
