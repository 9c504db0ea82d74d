"""Bad uploads get a 4xx with a clear message, write nothing outside their job's folder; the server keeps serving."""

from __future__ import annotations

import asyncio
import gzip
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scan_files import symlink_zip, zip_bytes
from serve_waits import multipart_upload_scope, wait_job

MIB = 2**20


def post(client, name, data, ctype="application/octet-stream"):
    return client.post("/v1/scans", files={"file": (name, data, ctype)})


def job_folders(client) -> set[str]:
    return {p.name for p in client.app.state.server.store.root.iterdir()}


@pytest.fixture
def unchanged(client):
    """Asserts after the test that no job folder was left behind and the server still answers."""
    before = job_folders(client)
    yield
    assert job_folders(client) == before
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "name, ctype",
    [
        ("scan.txt", "application/octet-stream"),
        ("scan.mhd", "application/octet-stream"),
        ("scan.exe", "application/octet-stream"),
        (".zip", "application/zip"),
        ("scan.mha", "text/html"),
        ("scan.zip", "image/png"),
    ],
)
def test_wrong_suffix_or_content_type_is_415(client, unchanged, name, ctype):
    response = post(client, name, b"ObjectType = Image\n", ctype)
    assert response.status_code == 415
    assert response.json()["detail"].endswith(".") and (
        "Upload" in response.json()["detail"] or "Send" in response.json()["detail"]
    )


def test_not_multipart_is_415(client, unchanged):
    response = client.post("/v1/scans", content=b"\x00" * 100, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415 and "multipart" in response.json()["detail"]


def test_missing_file_field_is_422(client, unchanged):
    response = client.post("/v1/scans", data={"other": "x"}, files={"scan": ("a.mha", b"x")})
    assert response.status_code == 422 and "'file'" in response.json()["detail"]


def test_oversize_upload_is_413_and_cut_off(client, unchanged):
    response = post(client, "big.mha", b"\x00" * (5 * MIB))
    assert response.status_code == 413 and "4 MiB" in response.json()["detail"]


def test_oversize_without_content_length_is_cut_off_while_streaming(client, unchanged):
    def body():  # chunked transfer: no Content-Length to refuse up front
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mha"\r\n\r\n'
        for _ in range(6):
            yield b"\x00" * MIB
        yield b"\r\n--b--\r\n"

    response = client.post("/v1/scans", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413


def test_gzip_suffix_without_gzip_and_bad_zip_are_400(client, unchanged):
    assert post(client, "scan.nii.gz", b"not gzip at all").status_code == 400
    response = post(client, "scan.zip", b"PK\x03\x04 truncated")
    assert response.status_code == 400 and "zip" in response.json()["detail"]


@pytest.mark.parametrize(
    "member", ["../evil.raw", "a/../../evil.raw", "/etc/evil.raw", "C:\\evil.raw", "..\\evil.raw", "a/.."]
)
def test_zip_slip_is_400_and_writes_nothing_outside(client, unchanged, member, tmp_path):
    root = client.app.state.server.store.root
    response = post(client, "scan.zip", zip_bytes({"scan.mhd": b"ObjectType = Image\n", member: b"x" * 10}))
    assert response.status_code == 400 and "outside" in response.json()["detail"]
    assert not (root.parent / "evil.raw").exists() and not (root / "evil.raw").exists()


def test_symlink_entry_is_400(client, unchanged):
    response = post(client, "scan.zip", symlink_zip("scan.raw", "/etc/passwd"))
    assert response.status_code == 400 and "symbolic link" in response.json()["detail"]


def test_zip_bombs_are_refused(client, unchanged):
    # one member that unpacks 1000x: the ratio check
    response = post(client, "bomb.zip", zip_bytes({"a.raw": b"\x00" * (4 * MIB)}))
    assert response.status_code == 413 and "zip bomb" in response.json()["detail"]
    # members that declare more than the limit in total, each compressing modestly
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4, 3 * MIB, dtype=np.uint8).tobytes()  # compresses about 4x
    response = post(client, "big.zip", zip_bytes({f"{k}.dcm": noisy for k in range(3)}))
    assert response.status_code == 413 and "8 MiB" in response.json()["detail"]
    # too many entries
    response = post(client, "many.zip", zip_bytes({f"{k}.dcm": b"" for k in range(300)}))
    assert response.status_code == 413 and "entries" in response.json()["detail"]


def test_zip_that_lies_about_its_sizes_is_stopped(client, unchanged):
    """A member whose header declares 10 bytes but whose data inflate to 6 MiB: the actual bytes are counted."""
    data = bytearray(zip_bytes({"a.raw": b"\x00" * (6 * MIB)}))
    # patch the declared uncompressed size (local header offset 22, central directory entry offset 24) down to 10
    import struct

    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    response = post(client, "liar.zip", bytes(data))
    assert response.status_code in (400, 413)


def test_two_scans_in_one_zip_and_empty_zip_are_400(client, unchanged):
    response = post(client, "two.zip", zip_bytes({"a.mha": b"x", "b.nii.gz": gzip.compress(b"x")}))
    assert response.status_code == 400 and "2 scans" in response.json()["detail"]
    assert post(client, "empty.zip", zip_bytes({"dir/": b""})).status_code == 400


def test_corrupt_scan_fails_its_job_with_the_readers_message(client):
    response = post(client, "broken.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 4 4\nElementDataFile = LOCAL\n")
    assert response.status_code == 202
    job = wait_job(client, response.json()["id"])
    assert (
        job["status"] == "failed"
        and "broken.mha" in job["error"]
        and str(client.app.state.server.store.root) not in job["error"]
    )
    assert job["findings"] is None
    assert client.get(f"/v1/scans/{job['id']}/slices/0.png").status_code == 404


def test_mhd_pointing_outside_its_folder_never_returns_other_bytes(client, tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(np.arange(64, dtype=np.int16).tobytes())
    header = f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = {secret}\n"
    header = header.encode()
    response = post(client, "scan.zip", zip_bytes({"scan.mhd": header}))
    assert response.status_code == 202
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "failed", job  # the reader refuses the path, or cannot find it: never reads the secret


# zipfile cuts a name at its first NUL (an empty name cannot be written): such names are not generated
_MEMBER = st.text(min_size=1, max_size=40).filter(lambda n: n.split("\x00")[0])


@given(names=st.lists(_MEMBER, min_size=1, max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_member_names_never_escape(client, names):
    root = client.app.state.server.store.root
    before = set(root.parent.iterdir())
    response = post(client, "scan.zip", zip_bytes({n: b"x" for n in names}))
    assert response.status_code < 500
    assert set(root.parent.iterdir()) == before  # nothing new beside the jobs folder
    if response.status_code == 202:
        folder = root / response.json()["id"]
        assert all(p.resolve().is_relative_to(folder.resolve()) for p in folder.rglob("*"))
        assert (
            wait_job(client, response.json()["id"])["status"] == "failed"
        )  # no scan in there (a DELETE now would restart the worker)
        assert client.delete(f"/v1/scans/{response.json()['id']}").status_code == 204


@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".zip", ".nii.gz", ".mha", ".nii", ".raw", ""]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_bytes_get_a_4xx_or_a_failed_job(client, data, suffix):
    response = post(client, f"x{suffix}", data)
    assert response.status_code in (202, 400, 413, 415, 422), response.text
    if response.status_code == 202:
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "failed" and job["error"]
        client.delete(f"/v1/scans/{job['id']}")
    assert client.get("/healthz").status_code == 200


@given(data=st.binary(max_size=300))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_multipart_bodies_get_a_4xx(client, data):
    response = client.post("/v1/scans", content=data, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= response.status_code < 500


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (_npy(np.array([{"a": 1}, None], dtype=object)), 400, "pickled"),
        (b"\x80\x04\x95 a raw pickle", 400, ".npy"),
        (_npy(np.zeros((3, 4, 5), np.int16)), 422, "patch size"),
        (_npy(np.zeros((2, 16, 32), np.int16)), 422, "patch size"),
        (_npy(np.zeros((16, 32, 32), bool)), 422, "dtype"),
        (_npy(np.full((16, 32, 32), np.nan, np.float32)), 422, "NaN"),
    ],
)
def test_bad_classify_bodies(client, body, status, fragment):
    response = client.post("/v1/classify", content=body, headers={"content-type": "application/octet-stream"})
    assert response.status_code == status and fragment in response.json()["detail"], response.text


def test_a_client_that_disconnects_mid_upload_leaves_nothing(client, unchanged):
    """Call the ASGI app directly: one chunk of the body, then the client is gone (uvicorn's http.disconnect)."""
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mha"\r\n\r\n' + b"\x00" * 1000
    messages = [{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = multipart_upload_scope()
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 400
