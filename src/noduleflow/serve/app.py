"""The HTTP API (docs/API.md): `create_app(settings)` builds the FastAPI app that `noduleflow serve` runs.

Scans are jobs (`jobs.JobStore` on disk, run one at a time by `worker.DetectionRunner` in a worker process);
/v1/classify is answered in this process by the Predictor's classifiers through `batching.ClassifyBatcher`.
Every error a client can cause is a 4xx with {"detail": one sentence naming the input and the fix}.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from noduleflow import __version__
from noduleflow.errors import NoduleflowError
from noduleflow.serve import render
from noduleflow.serve.batching import ClassifyBatcher
from noduleflow.serve.body import multipart_field, read_body, read_patches
from noduleflow.serve.jobs import JobStore
from noduleflow.serve.metrics import ServerMetrics
from noduleflow.serve.settings import ServeSettings
from noduleflow.serve.unzip import check_container, extract_zip
from noduleflow.serve.uploads import UploadError, receive_upload
from noduleflow.serve.worker import DetectionRunner

log = logging.getLogger("noduleflow")
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/healthz", "/readyz", "/")  # answered without a token (and /static/*: the viewer asks for it)
MAX_CLASSIFY_PATCHES = 1024
_SCAN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".mha, .nii.gz, .nii, or .zip of an .mhd + .raw pair or a DICOM series",
                        }
                    },
                }
            }
        },
    }
}
_NPY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": ".npy (D, H, W) or (N, D, H, W) HU"}
            },
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


class _Server:
    """What the endpoints share: settings, job store, runner, the classify Predictor and batcher, metrics."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.store = JobStore(settings.state)
        self.runner = DetectionRunner(settings, self.store, on_finish=self._finished)
        self.metrics = ServerMetrics(self.runner.queued, self.store.counts)
        self.predictor = None
        self.batcher: ClassifyBatcher | None = None
        self.load_error: str | None = None

    def start(self) -> None:
        self.runner.start(self.store.recover())
        threading.Thread(target=self._load, name="noduleflow-load", daemon=True).start()

    def _load(self) -> None:
        """Load the classifiers for /v1/classify."""
        from noduleflow.detect import Predictor

        try:
            # eager torch with its batches by default: a batch of patches costs eager PyTorch little more than
            # one (per-call overhead), while ONNX Runtime's classifier gained nothing from batching here
            # (docs/decisions.md); an explicit --runtime onnx|int8 (a torch-free deployment) or a run that holds
            # only RUN/export/ is served from the exports
            s = self.settings
            has_weights = (s.run / "classify" / "best.pt").is_file()
            runtime = "torch" if s.runtime in ("auto", "torch") and has_weights else s.runtime
            self.predictor = Predictor.from_run(s.run, runtime=runtime, threads=s.threads)
        except Exception as err:  # noqa: BLE001 - becomes a 4xx or a log line
            self.load_error = f"cannot load the detector run {self.settings.run}: {err}"
            log.error("%s", self.load_error)
            return
        self.batcher = ClassifyBatcher(
            self.predictor.classify_patches,
            max_batch=s.classify_max_batch,
            max_wait_ms=s.classify_max_wait_ms,
            on_batch=self.metrics.on_batch,
        )

    def ready(self) -> bool:
        return self.batcher is not None and self.runner.ready.is_set() and self.runner.worker_error is None

    def stop(self) -> None:
        self.runner.stop()
        if self.batcher is not None:
            self.batcher.stop()

    def _finished(self, job: dict) -> None:
        self.metrics.job_seconds.labels(job["status"]).observe(max(job["finished"] - job["created"], 0.0))


def create_app(settings: ServeSettings) -> FastAPI:
    """The app over `settings` (see `ServeSettings`); its lifespan starts and stops the runner and loads the models."""
    server = _Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.stop)

    app = FastAPI(
        title="noduleflow",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Lung nodule detection in chest CT: upload a scan, poll its job, read its findings and slices.",
    )
    app.state.server = server
    _install_middleware(app, server)
    _install_handlers(app, server)
    _scan_routes(app, server)
    _other_routes(app, server)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    else:

        @app.get("/static/{path:path}", include_in_schema=False)
        async def no_viewer(path: str):
            raise _NotFound("the web viewer is not installed (src/noduleflow/serve/static/ is missing)")

    return app


def _install_middleware(app: FastAPI, server: _Server) -> None:
    token = server.settings.token
    expected = f"Bearer {token}".encode() if token else None

    @app.middleware("http")
    async def auth_and_metrics(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        if expected is not None and path not in OPEN_PATHS and not path.startswith("/static/"):
            given = request.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                response = JSONResponse(
                    {"detail": "this server needs a token: send the header 'Authorization: Bearer <token>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                _count(server, request, response.status_code, start)
                return response
        try:
            response = await call_next(request)
        except Exception:
            _count(server, request, 500, start)
            raise
        _count(server, request, response.status_code, start)
        return response


def _count(server: _Server, request: Request, status: int, start: float) -> None:
    route = request.scope.get("route")
    template = getattr(route, "path", None) or ("/static" if request.url.path.startswith("/static/") else "unmatched")
    server.metrics.requests.labels(request.method, template, str(status)).inc()
    server.metrics.latency.labels(request.method, template).observe(time.perf_counter() - start)


def _install_handlers(app: FastAPI, server: _Server) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError):
        if request.url.path == "/v1/scans":
            server.metrics.rejected.labels(str(err.status)).inc()
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(NoduleflowError)
    async def user_error(request: Request, err: NoduleflowError):
        return JSONResponse({"detail": err.message}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {"detail": f"{where or 'request'}: {first.get('msg', 'is not valid')}; /openapi.json says what it takes"},
            status_code=422,
        )


def _has_malignancy(predictor) -> bool:
    """Whether the run has a malignancy model (exported Predictors list their contracts; torch ones hold the nets)."""
    contracts = getattr(predictor, "contracts", None)
    if contracts is not None:
        return "malignancy" in contracts
    return getattr(predictor.models, "malignancy", None) is not None


def _job_or_404(server: _Server, job_id: str) -> dict:
    job = server.store.get(job_id)
    if job is None:
        raise _NotFound(f"no scan job {job_id[:64]!r} on this server (finished jobs stay until DELETEd)")
    return job


class _NotFound(UploadError):
    def __init__(self, what: str):
        super().__init__(404, what)


def _scan_routes(app: FastAPI, server: _Server) -> None:
    store, runner, settings = server.store, server.runner, server.settings

    def queue_full() -> UploadError:
        return UploadError(
            429, f"the server's queue is full ({settings.max_queue} scans waiting)", fix="Retry in a minute."
        )

    @app.post("/v1/scans", status_code=202, openapi_extra=_SCAN_BODY, summary="Upload a scan; detection runs as a job")
    async def upload_scan(request: Request):
        if runner.queued() >= settings.max_queue:
            raise queue_full()
        job_id, folder = store.new_folder()
        try:
            upload = await receive_upload(request, folder / "upload", settings)
            check_container(upload.path)
            scan = upload.path
            if upload.path.name.lower().endswith(".zip"):
                scan = await run_in_threadpool(extract_zip, upload.path, folder / "scan", settings)
            if runner.queued() >= settings.max_queue:
                raise queue_full()
            store.create(job_id, upload.filename, scan)
        except ClientDisconnect:
            store.discard(folder)
            log.info("client disconnected while uploading; upload discarded")
            return Response(status_code=400)
        except BaseException:
            store.discard(folder)
            raise
        runner.submit(job_id)
        log.info("job %s queued: %s (%d bytes)", job_id, upload.filename, upload.size)
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=202)

    @app.get("/v1/scans", summary="All jobs, newest first")
    async def list_scans():
        jobs = await run_in_threadpool(store.all)
        return {"jobs": [{k: j[k] for k in ("id", "status", "filename", "created")} for j in jobs]}

    @app.get("/v1/scans/{job_id}", summary="A job's status, then its findings")
    async def get_scan(job_id: str):
        job = _job_or_404(server, job_id)
        result = store.result(job_id) if job["status"] == "done" else None
        return {
            "id": job["id"],
            "status": job["status"],
            "filename": job["filename"],
            "created": job["created"],
            "error": job["error"],
            "scan": job["scan"],
            "findings": None if result is None else result["findings"],
            "warnings": None if result is None else result["warnings"],
            "candidates": job["candidates"],
            "seconds": job["seconds"],
        }

    def done_slice(job_id: str, k: int) -> tuple[dict, Path]:
        job = _job_or_404(server, job_id)
        if job["status"] != "done":
            raise _NotFound(f"scan job {job_id} is {job['status']}, not done: its slices exist once it is done")
        depth = job["scan"]["shape"][0]
        if not 0 <= k < depth:
            raise _NotFound(f"slice {k} is out of range: scan job {job_id} has slices 0 to {depth - 1}")
        return job, store.root / job_id

    @app.get("/v1/scans/{job_id}/slices/{k}.png", response_class=Response, summary="Axial slice k as a grayscale PNG")
    async def get_slice(job_id: str, k: int, window: Literal["lung", "mediastinum"] = "lung"):
        _, folder = done_slice(job_id, k)
        try:
            png = await run_in_threadpool(lambda: render.slice_png(render.load_scan(folder), k, window))
        except FileNotFoundError:  # deleted between the check and the read
            raise _NotFound(f"scan job {job_id} was deleted") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get(
        "/v1/scans/{job_id}/mask/{k}.png",
        response_class=Response,
        summary="Slice k of the candidate mask as an RGBA PNG",
    )
    async def get_mask(job_id: str, k: int):
        job, folder = done_slice(job_id, k)
        try:
            png = await run_in_threadpool(render.mask_png, folder, tuple(job["scan"]["shape"]), k)
        except FileNotFoundError:  # deleted between the check and the read
            raise _NotFound(f"scan job {job_id} was deleted") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.delete(
        "/v1/scans/{job_id}", status_code=204, response_class=Response, summary="Stop a job and remove its files"
    )
    async def delete_scan(job_id: str):
        _job_or_404(server, job_id)
        await run_in_threadpool(runner.cancel, job_id)
        await run_in_threadpool(store.delete, job_id)
        return Response(status_code=204)


def _other_routes(app: FastAPI, server: _Server) -> None:
    settings = server.settings

    @app.post("/v1/classify", openapi_extra=_NPY_BODY, summary="P(nodule) and P(malignant) of candidate patches")
    async def classify(request: Request):
        if server.batcher is None:
            raise UploadError(503, "the models are still loading", fix="Retry when GET /readyz answers 200.")
        body = await read_body(request, limit=64 * 2**20, idle_s=settings.upload_idle_s)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            body = multipart_field(body, ctype)
        patches = read_patches(body, server.predictor.patch_size(), MAX_CLASSIFY_PATCHES)
        nodule, malignant = await asyncio.wrap_future(server.batcher.submit(patches))
        return {
            "nodule": [float(p) for p in nodule],
            "malignancy": None if malignant is None else [float(p) for p in malignant],
        }

    @app.get("/v1/model", summary="The served model: run, runtime, patch size")
    async def model():
        if server.predictor is None:
            raise UploadError(503, "the models are still loading", fix="Retry when GET /readyz answers 200.")
        p = server.predictor
        return {
            "run": settings.run.name,
            "runtime": server.runner.runtime or settings.runtime,
            "patch_size": list(p.patch_size()),
            "has_malignancy": _has_malignancy(p),
            "malignancy_model": getattr(p, "malignancy_source", None),
        }

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="The models are loaded")
    async def readyz():
        if server.ready():
            return {"status": "ready"}
        error = server.load_error or server.runner.worker_error
        return JSONResponse(
            {"status": "failed" if error else "loading", "detail": error or "the models are still loading"},
            status_code=503,
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        text = await run_in_threadpool(server.metrics.text)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if not page.is_file():
            raise _NotFound("the web viewer is not installed (src/noduleflow/serve/static/index.html is missing)")
        return FileResponse(page, media_type="text/html")
