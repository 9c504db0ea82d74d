import numpy as np
import pytest

from noduleflow.ct.hu import NAN_HU, to_hu_int16


def test_int16_is_returned_without_copy():
    a = np.array([[-1024, 0, 3071]], dtype=np.int16)
    assert to_hu_int16(a) is a


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([0, 1000, 65535], np.uint16, [0, 1000, 32767]),
        ([-40000, -1024, 40000], np.int32, [-32768, -1024, 32767]),
        ([0, 255], np.uint8, [0, 255]),
        ([-1, 2**40], np.int64, [-1, 32767]),
        ([1.4, 1.6, -1.6, -1024.2], np.float32, [1, 2, -2, -1024]),
        ([np.nan, np.inf, -np.inf, 1e9, -1e9], np.float64, [NAN_HU, 32767, -32768, 32767, -32768]),
    ],
)
def test_other_dtypes_are_rounded_and_clipped(values, dtype, expected):
    out = to_hu_int16(np.array(values, dtype=dtype))
    assert out.dtype == np.int16
    assert out.tolist() == expected


def test_bool_is_refused():
    with pytest.raises(ValueError, match="bool"):
        to_hu_int16(np.zeros(3, dtype=bool))
