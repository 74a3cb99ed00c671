"""The tests' one-off HTTP calls: httpx's functions, sharing one TLS context.

``httpx.get``/``post`` build a client, and with it a TLS context loading the CA bundle (~30 ms), per call;
the suite makes thousands of calls to loopback servers. A call here is that call with ``verify`` set to a
context made once (still verifying, should a test ever speak TLS).
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

TLS = ssl.create_default_context()


def request(method: str, url: str, **options: Any) -> httpx.Response:
    options.setdefault("verify", TLS)
    return httpx.request(method, url, **options)


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def delete(url: str, **options: Any) -> httpx.Response:
    return request("DELETE", url, **options)


def client(**options: Any) -> httpx.Client:
    """An ``httpx.Client`` (kept-alive connections, a cookie jar) on the shared context."""
    options.setdefault("verify", TLS)
    return httpx.Client(**options)
