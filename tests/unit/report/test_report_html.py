"""The page's bricks: escaping of any text, and images scaled down to the size bound."""

from __future__ import annotations

import html as std_html
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.report import html


@given(st.text())
def test_escaped_text_has_no_markup_and_reads_back(text):
    out = html.esc(text)
    assert not set("<>\"'") & set(out)
    assert std_html.unescape(out) == text


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 1500), st.integers(1, 1500))
def test_shrink_bounds_the_longest_side_and_keeps_the_shape(width, height):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    with Image.open(io.BytesIO(html.shrink(buffer.getvalue(), 300))) as small:
        assert max(small.size) == min(300, max(width, height))
        scale = min(1.0, 300 / max(width, height))  # one factor for both sides, each rounded to a whole pixel
        assert abs(small.width - width * scale) <= 1 and abs(small.height - height * scale) <= 1


def test_number_refuses_what_is_not_a_finite_number():
    assert [html.number(v) for v in (0.12345, 3, None, float("nan"), float("inf"), "1", True)] == [
        "0.123",
        "3.000",
        "-",
        "-",
        "-",
        "-",
        "-",
    ]
