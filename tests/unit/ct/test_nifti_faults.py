"""NIfTI files from a stranger: sizes checked against the file and MAX_VOXELS, units, non-CT voxel types, and a
property test that mutates the header fields of a small valid file."""

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from noduleflow.ct import read_volume
from noduleflow.ct.hu import to_hu_int16
from noduleflow.errors import ScanError


def _save(path, data, affine=None, *, units="mm", slope=None, inter=None):
    affine = np.diag([0.7, 0.8, 2.5, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units(units)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("units, per_mm", [("meter", 1000.0), ("micron", 0.001), ("mm", 1.0)])
def test_xyz_units_become_millimetres_like_itk(tmp_path, units, per_mm):
    affine = np.diag([0.7 / per_mm, 0.8 / per_mm, 2.5 / per_mm, 1.0])
    affine[:3, 3] = np.array([-10.0, 20.0, -300.0]) / per_mm
    path = _save(tmp_path / f"{units}.nii", np.full((4, 5, 6), -1000, np.int16), affine, units=units)
    ours, itk = read_volume(path), sitk.ReadImage(str(path))
    np.testing.assert_allclose(ours.spacing_xyz, [0.7, 0.8, 2.5], rtol=1e-6)
    np.testing.assert_allclose(ours.origin_xyz, [10.0, -20.0, -300.0], rtol=1e-6)  # RAS -> LPS
    np.testing.assert_allclose(ours.spacing_xyz, itk.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(ours.origin_xyz, itk.GetOrigin(), rtol=1e-6)


def _raises(path, *fragments):
    with pytest.raises(ScanError) as err:
        read_volume(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(err.value)


def test_nan_affine(tmp_path):
    affine = np.eye(4)
    affine[0, 3] = np.nan
    _raises(_save(tmp_path / "nan.nii", np.zeros((2, 3, 4), np.int16), affine), "non-finite affine")


@pytest.mark.parametrize(
    "data", [np.zeros((2, 3, 4), np.complex64), np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])]
)
def test_complex_and_rgb_voxels(tmp_path, data):
    _raises(_save(tmp_path / "odd.nii.gz", data), "not CT values")


def _with_dims(path, dims):
    header = np.frombuffer(bytearray(path.read_bytes()[:348]), dtype=nib.nifti1.header_dtype).copy()
    header["dim"][0][: len(dims) + 1] = [len(dims), *dims]
    path.write_bytes(header.tobytes() + path.read_bytes()[348:])
    return path


def test_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
    path = _with_dims(_save(tmp_path / "huge.nii", np.zeros((2, 3, 4), np.int16)), [30000, 30000, 30000])
    _raises(path, "30000 x 30000 x 30000", "more than the")


@pytest.mark.parametrize("cut", [2, -2])
def test_uncompressed_size_must_match_the_header(tmp_path, cut):
    path = _save(tmp_path / "cut.nii", np.zeros((2, 3, 4), np.int16))
    data = path.read_bytes()
    path.write_bytes(data[:-cut] if cut > 0 else data + bytes(-cut))
    _raises(path, f"holds {48 - cut} bytes of voxels", "need 48")


def test_scaled_file_is_scaled_in_float32_one_slice_at_a_time(tmp_path):
    stored = np.random.default_rng(2).integers(-2000, 2000, (48, 48, 16)).astype(np.int16)
    path = _save(tmp_path / "scaled.nii", stored, slope=0.5, inter=-1000.25)
    expected = to_hu_int16(nib.load(path).get_fdata().T)  # nibabel's float64, the reference
    tracemalloc.start()
    try:
        volume = read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(volume.hu, expected)
    assert peak < 2 * stored.nbytes  # the whole float64 array alone would be 4x


def test_mr_like_values_warn(tmp_path, caplog):
    path = _save(tmp_path / "mr.nii", np.random.default_rng(1).integers(0, 4000, (4, 5, 6)).astype(np.int16))
    with caplog.at_level("WARNING", logger="noduleflow"):
        read_volume(path)
    assert len(caplog.records) == 1 and "no voxel is below -500 HU" in caplog.records[0].getMessage()


# --- property-based: mutate the header fields of a small valid file ---

_FIELDS = [
    "sizeof_hdr",
    "dim",
    "datatype",
    "bitpix",
    "vox_offset",
    "scl_slope",
    "scl_inter",
    "pixdim",
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
    "magic",
    "dim_info",
    "intent_code",
]
_SPECIALS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    16,
    64,
    128,
    255,
    256,
    352,
    511,
    32767,
    -32768,
    2**31 - 1,
    1e-300,
    1e300,
    0.5,
    1e-3,
    float("nan"),
    float("inf"),
    -float("inf"),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(st.tuples(st.sampled_from(_FIELDS), st.integers(0, 7), st.sampled_from(_SPECIALS)), max_size=3),
    gz=st.booleans(),
    stored_type=st.sampled_from([np.int16, np.uint8, np.float32, np.int32]),
    seed=st.integers(0, 2**16),
)
@example(changes=[("scl_slope", 0, 0.001)], gz=False, stored_type=np.int16, seed=7698)  # a half-HU tie (CI, 2026-12-07)
def test_any_header_mutation_reads_a_volume_or_raises_scan_error(tmp_path, changes, gz, stored_type, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(-1024, 255, (5, 4, 3)).astype(stored_type)
    path = _save(tmp_path / "valid.nii", data)
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(raw[:348], dtype=nib.nifti1.header_dtype).copy()
    for field, index, value in changes:
        target = header[field] if header[field].ndim == 1 else header[field][0]
        slot = (0,) if header[field].ndim == 1 else (index % target.shape[0],)
        kind = target.dtype.kind
        if kind == "S":
            target[slot] = str(value).encode()[: target.dtype.itemsize]
        elif kind in "iu":
            target[slot] = (
                np.array(value).astype(np.float64).clip(np.iinfo(target.dtype).min, np.iinfo(target.dtype).max)
                if np.isfinite(value)
                else 0
            )
        else:
            with np.errstate(over="ignore"):  # 1e300 into a float32 field is inf, which is the point
                target[slot] = value
    body = header.tobytes() + bytes(raw[348:])
    out = tmp_path / ("mutated.nii.gz" if gz else "mutated.nii")
    out.write_bytes(gzip.compress(body) if gz else body)
    try:
        volume = read_volume(out)
    except ScanError as err:
        assert str(out) in str(err)
        event("ScanError")
        return
    event("read a volume" + (" (unchanged)" if not changes else ""))
    assert volume.hu.dtype == np.int16 and np.all(np.isfinite(volume.origin_xyz))
    assert np.all(volume.spacing_xyz >= 0.01) and np.all(volume.spacing_xyz <= 50)
    reference = nib.load(out)  # small and size-checked now, so nibabel's float64 read is safe
    exact = np.asarray(reference.get_fdata(dtype=np.float64)).reshape(reference.shape[:3]).T
    expected = to_hu_int16(exact)
    # the reader scales in float32 (ct.nifti), nibabel here in float64: a value within float32 rounding of a
    # half-integer (scl_slope 0.001 on -500 gives -0.50000002) may round either way, by one HU at most
    with np.errstate(invalid="ignore"):
        tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) <= 1e-6 * np.maximum(np.abs(exact), 1.0)
    np.testing.assert_array_equal(volume.hu[~tie], expected[~tie])
    assert np.all(np.abs(volume.hu[tie].astype(np.int32) - expected[tie]) <= 1)
    if not changes:
        np.testing.assert_array_equal(volume.hu, data.T)


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "reoriented_anat_moved.nii", "resampled_anat_moved.nii", "standard.nii.gz"]
)
def test_nibabel_bundled_files_read_like_nibabel_and_itk(name):
    """Real files written by other tools: values as nibabel scales them, geometry as SimpleITK places it."""
    from nibabel.testing import data_path

    path = f"{data_path}/{name}"
    ours, reference, itk = read_volume(path), nib.load(path), sitk.ReadImage(path)
    np.testing.assert_array_equal(
        ours.hu, to_hu_int16(np.asarray(reference.get_fdata()).reshape(reference.shape[:3]).T)
    )
    np.testing.assert_allclose(ours.origin_xyz, itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.spacing_xyz, itk.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ours.direction.ravel(), itk.GetDirection(), atol=1e-5)


def test_nibabel_bundled_4d_file_is_refused():
    from nibabel.testing import data_path

    _raises(f"{data_path}/example4d.nii.gz", "4D image of shape (128, 96, 24, 2)")
