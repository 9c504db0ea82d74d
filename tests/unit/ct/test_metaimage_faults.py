"""MetaImage headers from a stranger: the data file stays in the header's folder, sizes are checked before
memory is taken, and every bad header is a ScanError (never another exception)."""

import builtins
import contextlib
import os
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from noduleflow.ct import read_volume
from noduleflow.ct.metaimage import ELEMENT_TYPES
from noduleflow.ct.volume import MAX_VOXELS
from noduleflow.errors import ScanError

SECRET = b"root:x:0:0:secret\n" * 8  # 144 bytes: a 72-voxel MET_SHORT volume if a header could name it


def _header(
    folder: Path,
    name: str = "scan.mhd",
    *,
    data_file: str = "scan.raw",
    dims="4 3 2",
    element_type="MET_SHORT",
    extra: str = "",
) -> Path:
    path = folder / name
    path.write_text(
        f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementSpacing = 0.7 0.7 2.5\n{extra}"
        f"ElementType = {element_type}\nElementDataFile = {data_file}\n"
    )
    return path


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside the scan folder that a header must never get read."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def scan_dir(tmp_path) -> Path:
    folder = tmp_path / "uploads" / "job1"
    folder.mkdir(parents=True)
    (folder / "scan.raw").write_bytes(np.arange(24, dtype="<i2").tobytes())
    return folder


@pytest.mark.parametrize(
    "kind", ["dotdot", "absolute", "symlink_out", "dotdot_backslash", "subfolder_dotdot", "folder_itself"]
)
def test_data_file_outside_the_header_folder_is_refused(scan_dir, secret, kind):
    if kind == "symlink_out":
        os.symlink(secret, scan_dir / "link.raw")
    data_file = {
        "dotdot": "../../outside/secret.txt",
        "absolute": str(secret),
        "symlink_out": "link.raw",
        "dotdot_backslash": "..\\..\\outside\\secret.txt",
        "subfolder_dotdot": "sub/../../../outside/secret.txt",
        "folder_itself": ".",
    }[kind]
    header = _header(scan_dir, dims="8 9 1", data_file=data_file)  # 72 voxels: exactly the secret's size
    with pytest.raises(ScanError) as err:
        read_volume(header)
    message = str(err.value)
    assert str(header) in message and "ElementDataFile" in message
    assert "header's own folder" in message and "next to the header" in message  # says what is wrong and the fix


def test_data_file_symlink_inside_the_folder_and_subfolder_are_read(scan_dir):
    os.symlink(scan_dir / "scan.raw", scan_dir / "alias.raw")
    (scan_dir / "data").mkdir()
    (scan_dir / "data" / "pixels.raw").write_bytes((scan_dir / "scan.raw").read_bytes())
    for data_file in ("alias.raw", "data/pixels.raw"):
        volume = read_volume(_header(scan_dir, data_file=data_file))
        np.testing.assert_array_equal(volume.hu.ravel(), np.arange(24))


def test_mha_with_local_pixels_still_reads(scan_dir):
    path = scan_dir / "local.mha"
    text = "NDims = 3\nDimSize = 4 3 2\nElementSpacing = 1 1 1\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    path.write_bytes(text.encode() + np.arange(24, dtype="<i2").tobytes())
    np.testing.assert_array_equal(read_volume(path).hu.ravel(), np.arange(24))


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"dims": "99999999999999999999999 1 1"}, "more than the"),  # beyond int64 (TypeError/OverflowError before)
        ({"dims": "4294967296 4294967296 1"}, "more than the"),  # product 2**64 wraps to 0 in int64
        ({"dims": "2048 2048 257"}, "more than the"),  # 2**30 + 2**22 voxels: just beyond MAX_VOXELS
        ({"data_file": ""}, "ElementDataFile is empty"),
        ({"extra": "HeaderSize = -5\n"}, "HeaderSize = -5 is negative"),
        ({"extra": "HeaderSize = 100\n"}, "holds -52 bytes"),
        ({"extra": "ElementSpacing = 1e-300 1e-300 1e-300\n"}, "voxel size"),
        ({"extra": "ElementSpacing = 1e300 1 1\n"}, "voxel size"),
        ({"extra": "TransformMatrix = 2 0 0 0 2 0 0 0 2\n"}, "not a rotation"),
        ({"extra": "Offset = 1e400 0 0\n"}, "Offset"),
        ({"extra": "NDims = 99999999999999999999999\n"}, "NDims"),
    ],
)
def test_bad_header_values_are_scan_errors(scan_dir, changes, fragment):
    # a later key wins, so ElementSpacing/NDims in `extra` override the defaults written before them
    header = _header(scan_dir, **changes)
    with pytest.raises(ScanError, match=fragment) as err:
        read_volume(header)
    assert str(header) in str(err.value) or str(scan_dir / "scan.raw") in str(err.value)


def test_max_voxels_fits_the_largest_luna16_scan():
    assert 512 * 512 * 800 < MAX_VOXELS <= 2**31  # any real chest CT, and at most 4 GiB of int16


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(ScanError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zlib_bomb_decompresses_no_more_than_the_header_needs(scan_dir):
    """130 kB of compressed zeros expand to 128 MB; the header asks for 24 bytes: reading stops at 25."""
    bomb, zeros = zlib.compressobj(9), bytes(1 << 24)
    data = b"".join(bomb.compress(zeros) for _ in range(8)) + bomb.flush()
    assert len(data) < 200_000
    (scan_dir / "bomb.zraw").write_bytes(data)
    header = _header(scan_dir, data_file="bomb.zraw", extra="CompressedData = True\n")
    with pytest.raises(ScanError, match="decompresses to more bytes, but DimSize 4 3 2 of MET_SHORT"):
        read_volume(header)
    assert _peak_bytes(lambda: read_volume(header)) < 8 << 20


def test_compressed_header_claiming_a_huge_volume_costs_only_what_the_file_holds(scan_dir):
    """1 MB of pixels under a header that claims 2 GB: the process's peak memory stays far below 2 GB
    (measured in a fresh process by its VmHWM, the peak resident size of its own memory; ru_maxrss would
    count the forking pytest process too)."""
    (scan_dir / "small.zraw").write_bytes(zlib.compress(bytes(1 << 20)))
    header = _header(scan_dir, data_file="small.zraw", dims="1024 1024 1000", extra="CompressedData = True\n")
    with pytest.raises(ScanError, match="decompresses to 1048576 bytes, but DimSize 1024 1024 1000"):
        read_volume(header)
    code = (
        "import re, sys; from noduleflow.ct import read_volume; from noduleflow.errors import ScanError\n"
        "try:\n    read_volume(sys.argv[1])\nexcept ScanError:\n    pass\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024)"
    )
    peak = int(
        subprocess.run([sys.executable, "-c", code, str(header)], capture_output=True, text=True, check=True).stdout
    )
    assert peak < 600e6


def test_float64_volume_is_converted_slice_by_slice(scan_dir):
    values = np.random.default_rng(0).uniform(-1000, 1000, size=(16, 48, 48))
    (scan_dir / "f8.raw").write_bytes(values.astype("<f8").tobytes())
    header = _header(scan_dir, data_file="f8.raw", dims="48 48 16", element_type="MET_DOUBLE")
    np.testing.assert_array_equal(read_volume(header).hu, np.rint(values).astype(np.int16))
    # int16 result (74 kB) + a slice; the whole float64 array would be 295 kB
    assert _peak_bytes(lambda: read_volume(header)) < 200_000


def test_clipped_values_and_non_ct_values_warn_once(scan_dir, caplog):
    (scan_dir / "f4.raw").write_bytes(np.array([-1000, 0, 50000, 7], dtype="<f4").tobytes())
    with caplog.at_level("WARNING", logger="noduleflow"):
        read_volume(_header(scan_dir, data_file="f4.raw", dims="2 2 1", element_type="MET_FLOAT"))
    assert len(caplog.records) == 1 and "1 voxel(s) lay outside int16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="noduleflow"):
        read_volume(_header(scan_dir))  # values 0..23: no air anywhere, as in MR
    assert len(caplog.records) == 1 and "no voxel is below -500 HU" in caplog.text


# --- property-based: any header either reads a correct volume or raises ScanError, and never opens a file outside ---


@contextlib.contextmanager
def _opened_files():
    """Records the resolved path of every file opened through `open` (what np.fromfile and the readers use)."""
    seen, real_open = [], builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            seen.append(Path(os.fsdecode(file)).resolve())
        return real_open(file, *args, **kwargs)

    with mock.patch("builtins.open", spy):
        yield seen


_NUMBER_TEXT = st.one_of(
    st.integers(-5, 40).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["nan", "inf", "-0", "1e-300", "1e300", "0x10", "", "3.5", "1_0"]),
    st.text(max_size=12),
)
_HEADER_VALUES = {
    "ObjectType": st.sampled_from(["Image", "Mesh", ""]),
    "NDims": st.one_of(st.just("3"), _NUMBER_TEXT),
    "DimSize": st.one_of(
        st.lists(st.integers(-2, 6), min_size=3, max_size=3).map(lambda v: " ".join(map(str, v))),
        st.lists(_NUMBER_TEXT, min_size=1, max_size=4).map(" ".join),
    ),
    "ElementSpacing": st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3).map(
            lambda v: " ".join(map(repr, v))
        ),
        _NUMBER_TEXT,
    ),
    "Offset": st.one_of(st.just("1 2 3"), _NUMBER_TEXT),
    "TransformMatrix": st.one_of(
        st.just("1 0 0 0 1 0 0 0 1"), st.just("0 0 0 0 0 0 0 0 0"), st.just("2 0 0 0 1 0 0 0 1"), _NUMBER_TEXT
    ),
    "ElementType": st.one_of(st.sampled_from(sorted(ELEMENT_TYPES)), st.text(max_size=10)),
    "ElementNumberOfChannels": st.sampled_from(["1", "3", "x"]),
    "BinaryDataByteOrderMSB": st.sampled_from(["True", "False", "maybe"]),
    "CompressedData": st.sampled_from(["True", "False", "1", "yes"]),
    "HeaderSize": st.one_of(st.integers(-8, 64).map(str), _NUMBER_TEXT),
    "ElementDataFile": st.sampled_from(
        [
            "scan.raw",
            "scan.zraw",
            "LOCAL",
            "",
            "../secret.txt",
            "../../outside/secret.txt",
            "SECRET_ABS",
            "link_out.raw",
            "link_in.raw",
            "sub/../scan.raw",
            "LIST",
            "scan%03d.raw",
            "..",
            ".",
            "/",
            "nothing.raw",
            "sub",
            "scan.raw extra words",
        ]
    ),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    dims=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    element_type=st.sampled_from(sorted(ELEMENT_TYPES)),
    msb=st.booleans(),
    compressed=st.booleans(),
    header_size=st.sampled_from([0, 0, 5, -1]),
    data_file=st.sampled_from(["scan.raw", "LOCAL", "link_in.raw", "sub/data.raw"]),
    size_delta=st.sampled_from([0, 0, 0, -1, 1, 7]),
    mutations=st.dictionaries(st.sampled_from(sorted(_HEADER_VALUES)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: _HEADER_VALUES[k] for k in keys})
    ),
    junk=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=12)), max_size=2),
    seed=st.integers(0, 2**16),
    suffix=st.sampled_from([".mhd", ".mha"]),
)
def test_any_header_reads_a_volume_or_raises_scan_error_and_stays_in_its_folder(
    tmp_path, dims, element_type, msb, compressed, header_size, data_file, size_delta, mutations, junk, seed, suffix
):
    """A valid header and data file, then up to three header keys replaced by anything (garbage, huge or
    negative numbers, paths out of the folder) and junk keys: the read gives exactly the pixels the
    header describes, or a ScanError naming the scan; no file outside the scan's folder is opened."""
    folder = tmp_path / "scan"
    secret_path = tmp_path / "outside" / "secret.txt"
    if not folder.exists():
        (folder / "sub").mkdir(parents=True)
        secret_path.parent.mkdir()
        secret_path.write_bytes(SECRET)
        (tmp_path / "secret.txt").write_bytes(SECRET)
        os.symlink(secret_path, folder / "link_out.raw")
        os.symlink(folder / "scan.raw", folder / "link_in.raw")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(ELEMENT_TYPES[element_type]).newbyteorder(">" if msb else "<")
    pixels = rng.integers(0, 256, int(np.prod(dims)) * dtype.itemsize + size_delta, dtype=np.uint8).tobytes()
    payload = bytes(max(header_size, 0)) + (zlib.compress(pixels) if compressed else pixels)
    fields = {
        "ObjectType": "Image",
        "NDims": "3",
        "DimSize": " ".join(map(str, dims)),
        "ElementSpacing": "0.5 0.75 2",
        "Offset": "-10 20.5 3",
        "TransformMatrix": "0 1 0 1 0 0 0 0 -1",
        "ElementType": element_type,
        "BinaryDataByteOrderMSB": str(msb),
        "CompressedData": str(compressed),
        "HeaderSize": str(header_size),
        "ElementDataFile": data_file,
    }
    fields.update({k: v.replace("SECRET_ABS", str(secret_path)) for k, v in mutations.items()})
    lines = [f"{k} = {v}" for k, v in junk if "=" not in k and "\n" not in k + v and "\r" not in k + v]
    lines += [f"{k} = {v}" for k, v in fields.items() if "\n" not in v and "\r" not in v and k != "ElementDataFile"]
    lines.append(f"ElementDataFile = {fields['ElementDataFile']}")
    header = folder / f"scan{suffix}"
    text = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    header.write_bytes(text + (payload if data_file == "LOCAL" else b""))
    (folder / ("sub/data.raw" if data_file == "sub/data.raw" else "scan.raw")).write_bytes(payload)

    with _opened_files() as opened:
        try:
            volume = read_volume(header)
        except ScanError as err:
            assert str(folder) in str(err)
            volume = None
    outside = [p for p in opened if not p.is_relative_to(folder.resolve())]
    assert not outside, f"read {outside} for header {lines}"
    clean = not mutations and not junk and size_delta == 0
    event("read a volume" if volume is not None else "ScanError")
    event(f"clean header: {'read' if volume is not None else 'ScanError'}" if clean else "mutated header")
    if clean:  # an untouched header must read, and give exactly its pixels
        assert volume is not None
        expected = np.frombuffer(pixels, dtype=dtype).reshape(dims[::-1]).astype(np.float64)
        expected = np.clip(np.rint(np.nan_to_num(expected, nan=-1024, posinf=32767, neginf=-32768)), -32768, 32767)
        np.testing.assert_array_equal(volume.hu, expected)
        np.testing.assert_array_equal(volume.origin_xyz, [-10, 20.5, 3])
        np.testing.assert_array_equal(volume.direction, [[0, 1, 0], [1, 0, 0], [0, 0, -1]])
    elif volume is not None:  # what was read is what the (mutated) header says
        assert volume.hu.shape == tuple(int(v) for v in fields["DimSize"].split()[::-1]) and volume.hu.dtype == np.int16
        assert np.all(np.isfinite(volume.origin_xyz)) and np.all(volume.spacing_xyz >= 0.01)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
    pixel_type=st.sampled_from(
        [sitk.sitkInt16, sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkFloat32, sitk.sitkFloat64]
    ),
    suffix=st.sampled_from([".mhd", ".mha"]),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_valid_itk_written_file_reads_like_itk(tmp_path, shape, pixel_type, suffix, compress, seed):
    rng = np.random.default_rng(seed)
    image = sitk.Cast(sitk.GetImageFromArray(rng.integers(-1024, 255, shape).astype(np.float64)), sitk.sitkFloat64)
    image = sitk.Cast(sitk.Abs(image) if pixel_type in (sitk.sitkUInt8, sitk.sitkUInt16) else image, pixel_type)
    image.SetSpacing(tuple(rng.uniform(0.3, 5, 3)))
    image.SetOrigin(tuple(rng.uniform(-300, 300, 3)))
    path = tmp_path / f"itk{suffix}"
    sitk.WriteImage(image, str(path), useCompression=compress)
    ours, itk = read_volume(path), sitk.ReadImage(str(path))
    np.testing.assert_array_equal(
        ours.hu, np.clip(np.rint(sitk.GetArrayFromImage(itk).astype(np.float64)), -32768, 32767)
    )
    np.testing.assert_allclose(ours.spacing_xyz, itk.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(ours.origin_xyz, itk.GetOrigin(), rtol=1e-12)
