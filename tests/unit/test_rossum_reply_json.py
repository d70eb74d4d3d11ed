"""The Rossum client parses replies with orjson and hands what orjson refuses to httpx, so a
reply reads the same as with ``json``."""

import httpx
import pytest

from rossflow.rossum.client import _json


@pytest.mark.parametrize(
    "body",
    [
        b'{"results": [{"id": 1, "content": [{"value": "\\u00e9 \xc3\xa9"}]}], "n": 1.5}',
        b'{"id": 9223372036854775807, "small": -9223372036854775808}',  # 64-bit ints exact
        b'{"total": NaN}',  # not JSON, but Python's json reads it
        '{"name": "Zürich"}'.encode("utf-16"),  # another encoding, declared by its BOM
    ],
)
def test_reply_reads_as_the_standard_library_reads_it(body):
    resp = httpx.Response(200, content=body, headers={"Content-Type": "application/json"})
    got = _json(resp)
    assert repr(got) == repr(resp.json())


def test_invalid_json_still_raises():
    resp = httpx.Response(200, content=b"<html>oops</html>")
    with pytest.raises(ValueError):
        _json(resp)
