"""The body of POST /v1/classify: a `.npy` file (raw or as a multipart field) read into patches, never unpickled."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header

from noduleflow.serve.uploads import UploadError


async def read_body(request, limit: int, idle_s: float) -> bytes:
    """The whole (small) body of `request`, refused (413) past `limit` bytes or (408) when idle for `idle_s`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(
            413,
            f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
            fix="Send fewer patches per request.",
        )
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_s)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise UploadError(408, f"request sent nothing for {idle_s:g} s and was cut off") from None
        size += len(chunk)
        if size > limit:
            raise UploadError(
                413, f"request body is over the limit of {limit} bytes", fix="Send fewer patches per request."
            )
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_field(body: bytes, content_type: str, field: str = "file") -> bytes:
    """The bytes of form field `field` in a multipart `body` already in memory (UploadError 400/422 otherwise)."""
    _, params = parse_options_header(content_type)
    parts: dict[str, bytes] = {}
    current = {"headers": {}, "name": b"", "value": b"", "data": []}

    def header_end():
        current["headers"][current["name"].lower()] = current["value"]
        current["name"], current["value"] = b"", b""

    def part_end():
        _, disp = parse_options_header(current["headers"].get(b"content-disposition", b""))
        parts.setdefault(disp.get(b"name", b"").decode("utf-8", "replace"), b"".join(current["data"]))
        current["headers"], current["data"] = {}, []

    callbacks = {
        "on_header_field": lambda d, s, e: current.__setitem__("name", current["name"] + d[s:e]),
        "on_header_value": lambda d, s, e: current.__setitem__("value", current["value"] + d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: current["data"].append(d[s:e]),
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(params.get(b"boundary", b""), callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as err:  # noqa: BLE001 - becomes a 4xx or a log line
        raise UploadError(400, f"request is not a well-formed multipart body ({type(err).__name__})") from None
    if field not in parts:
        raise UploadError(
            422, f"the multipart body has no field {field!r}", fix=f"Send the .npy file as the form field {field!r}."
        )
    return parts[field]


def read_patches(data: bytes, patch_size: tuple[int, int, int], max_patches: int):
    """(N, D, H, W) float32 HU patches from the bytes of a `.npy` file holding (D, H, W) or (N, D, H, W) numbers.

    Never unpickles (`allow_pickle=False`): an object array is refused (400), like bytes that are not .npy;
    a wrong shape, dtype, non-finite values or more than `max_patches` patches are 422.
    """
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - ValueError for pickled object arrays and bad headers, EOFError, OSError...
        raise UploadError(
            400,
            f"body is not a .npy array without pickled objects ({type(err).__name__}: {str(err)[:120]})",
            fix="Send np.save's output of an int16 or float array in HU.",
        ) from None
    if not isinstance(array, np.ndarray):
        raise UploadError(400, "body is an .npz archive, not one .npy array", fix="Send np.save's output of one array.")
    if array.dtype.kind not in "iuf":
        raise UploadError(
            422, f"patches of dtype {array.dtype} are not numbers in HU", fix="Send an int16 or float array."
        )
    want = tuple(patch_size)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != want or len(array) == 0:
        raise UploadError(
            422,
            f"patches of shape {list(array.shape)} do not match the classifier's patch size {list(want)}",
            fix=f"Send (D, H, W) = {list(want)} or (N, {', '.join(map(str, want))}); GET /v1/model tells the size.",
        )
    if len(array) > max_patches:
        raise UploadError(
            422,
            f"{len(array)} patches in one request; the limit is {max_patches}",
            fix="Split them over several requests.",
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UploadError(422, "patches hold NaN or infinite values", fix="Send finite HU values.")
    return array
