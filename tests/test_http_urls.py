"""`joined_url` builds exactly the request URL httpx's own merge would, or leaves the path to
httpx: every request still goes where it went before the shortcut."""

from __future__ import annotations

import httpx
import pytest

from connector.sources.urls import joined_url

BASES = [
    "http://127.0.0.1:8080/api/",
    "https://vendor.example/v1",
    "http://vendor.example",
    "http://user:secret@vendor.example:8443/a%20b/",
]
PLAIN = ["invoices", "invoices/INV-000001", "invoices/a.b", "pages/", "~x_y-z"]
# Paths httpx quotes, normalises or reads a query from: left to httpx.
LEFT_TO_HTTPX = ["a/../b", "./a", ".well-known", "a b", "a//b", "a?x=1", "%41", "é", "INV%2F1"]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("path", PLAIN + LEFT_TO_HTTPX)
def test_joined_url_is_the_url_httpx_would_request(base: str, path: str) -> None:
    client = httpx.Client(base_url=base)
    joined = joined_url(client.base_url, path)
    if path in LEFT_TO_HTTPX:
        assert joined == path
    elif base.endswith("/"):
        assert isinstance(joined, httpx.URL)
    expected = client.build_request("GET", path, params={"page": 2}).url
    assert client.build_request("GET", joined, params={"page": 2}).url == expected
    assert str(client.build_request("GET", joined).url) == str(
        client.build_request("GET", path).url
    )


def test_a_base_url_with_a_query_is_left_to_httpx() -> None:
    base = httpx.URL("http://vendor.example/api/?key=1")
    assert joined_url(base, "invoices") == "invoices"
