"""Remote image URLs: off by default; when allowed, only listed hosts, only public addresses (an IP the
operator lists literally excepted, never for a redirect), a size cap while streaming, one deadline.

Fetches go to a real HTTP server on 127.0.0.1 that this module starts (and which is
allowlisted explicitly); it records every path it is asked for, so a test can tell that a
refused hop was never even requested.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import ValidationError

from diptych.server.app import create_app
from diptych.server.errors import APIError
from diptych.server.remote_images import RemoteImageFetcher, RemoteImagePolicy, is_public
from diptych.settings import Settings
from tests.server.bad_inputs import images
from tests.server.bad_inputs.table import chat_body, image_part, text_part, user_message
from tests.server.scripted_engine import scripted_engine

PNG = images.png((24, 16), (0, 200, 0))
BIG = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append(self.path)
        if self.path == "/slow.png":
            time.sleep(2.0)
        if self.path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(2 * BIG // 1024):
                    self.wfile.write(b"400\r\n" + b"\0" * 1024 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up at the cap, as it should
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Handler.routes = {
        "/image.png": (200, {"Content-Type": "image/png"}, PNG),
        "/not-an-image": (200, {"Content-Type": "image/png"}, b"<html>hello</html>"),
        "/big.png": (200, {"Content-Type": "image/png"}, b"\0" * (2 * BIG)),
        "/slow.png": (200, {"Content-Type": "image/png"}, PNG),
        "/redirect-relative": (302, {"Location": "/image.png"}, b""),
        "/redirect-to-self": (302, {"Location": f"{base}/image.png"}, b""),
        "/redirect-to-private": (302, {"Location": "http://10.1.2.3/image.png"}, b""),
        "/redirect-to-metadata": (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/redirect-to-unlisted": (301, {"Location": "https://elsewhere.example/cat.png"}, b""),
    }
    thread = threading.Thread(target=server.serve_forever, name="test-image-origin", daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    _Handler.seen.clear()


class _Body(httpx.AsyncByteStream):
    """A streamed body, as a real transport gives (content= would arrive already read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def fetcher(*hosts: str, max_bytes: int = BIG, timeout_s: float = 5.0, **kwargs: object) -> RemoteImageFetcher:
    return RemoteImageFetcher(RemoteImagePolicy(hosts, max_bytes, timeout_s, 3), **kwargs)  # type: ignore[arg-type]


async def refused(fetch: RemoteImageFetcher, url: str) -> APIError:
    with pytest.raises(APIError) as info:
        await fetch.fetch(url, param="p")
    assert info.value.status == 400 and info.value.param == "p"
    return info.value


async def test_an_allowlisted_ip_serves_an_image_end_to_end(origin: str) -> None:
    settings = Settings(remote_image_hosts="127.0.0.1")
    scripted = scripted_engine(settings)
    app = create_app(scripted.orchestrator, settings, manage_engine=False)
    body = chat_body(messages=[user_message(image_part(f"{origin}/image.png"), text_part("colour?"))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (prompt,) = scripted.ar.prompts
    assert prompt.images[0].size == (24, 16) and prompt.images[0].getpixel((3, 3)) == (0, 200, 0)
    assert _Handler.seen == ["/image.png"]


async def test_off_by_default_and_nothing_is_requested(origin: str) -> None:
    error = await refused(RemoteImageFetcher(RemoteImagePolicy()), f"{origin}/image.png")
    assert error.code == "remote_images_disabled" and _Handler.seen == []


async def test_a_relative_redirect_within_the_listed_ip_is_refused_as_loopback(origin: str) -> None:
    # The literal-IP exemption is for the URL the client named; a redirect must land on a public address.
    for path in ("/redirect-relative", "/redirect-to-self"):
        error = await refused(fetcher("127.0.0.1"), f"{origin}{path}")
        assert error.code == "remote_image_not_allowed" and "127.0.0.1" in error.message
    assert _Handler.seen == ["/redirect-relative", "/redirect-to-self"]


async def test_a_redirect_to_a_private_address_is_refused_even_when_listed(origin: str) -> None:
    error = await refused(fetcher("127.0.0.1", "10.1.2.3"), f"{origin}/redirect-to-private")
    assert error.code == "remote_image_not_allowed" and "10.1.2.3" in error.message


async def test_a_redirect_to_cloud_metadata_is_refused(origin: str) -> None:
    error = await refused(fetcher("127.0.0.1", "169.254.169.254"), f"{origin}/redirect-to-metadata")
    assert error.code == "remote_image_not_allowed" and "169.254.169.254" in error.message


async def test_a_redirect_to_an_unlisted_host_is_refused_before_resolving(origin: str) -> None:
    async def resolver(host: str, port: int) -> list:
        raise AssertionError(f"resolved {host}")

    error = await refused(fetcher("127.0.0.1", resolver=resolver), f"{origin}/redirect-to-unlisted")
    assert error.code == "remote_image_not_allowed" and "elsewhere.example" in error.message


async def test_an_unlisted_host_is_never_requested(origin: str) -> None:
    port = origin.rsplit(":", 1)[1]
    error = await refused(fetcher("127.0.0.1"), f"http://localhost:{port}/image.png")
    assert error.code == "remote_image_not_allowed" and _Handler.seen == []


async def test_a_listed_name_that_resolves_to_loopback_is_refused(origin: str) -> None:
    # Only an IP listed literally may be private: a name's DNS answer can change under the operator.
    port = origin.rsplit(":", 1)[1]
    error = await refused(fetcher("localhost"), f"http://localhost:{port}/image.png")
    assert error.code == "remote_image_not_allowed" and _Handler.seen == []


async def test_one_private_address_among_public_ones_is_refused() -> None:
    async def resolver(host: str, port: int) -> list:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("192.168.1.10")]

    error = await refused(fetcher("images.example", resolver=resolver), "https://images.example/a.png")
    assert error.code == "remote_image_not_allowed" and "192.168.1.10" in error.message


async def test_the_request_goes_to_the_checked_address_with_the_original_host() -> None:
    # No second DNS lookup between the check and the connection (DNS rebinding).
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/start":
            return httpx.Response(302, headers={"Location": "https://cdn.example/final.png"})
        return httpx.Response(200, stream=_Body(PNG))

    answers = {"images.example": "93.184.216.34", "cdn.example": "2606:4700::1111"}

    async def resolver(host: str, port: int) -> list:
        return [ipaddress.ip_address(answers[host])]

    fetch = fetcher("images.example", "*.example", resolver=resolver, transport=httpx.MockTransport(handler))
    assert await fetch.fetch("https://images.example/start", param="p") == PNG
    assert [(r.url.host, r.headers["host"], r.extensions.get("sni_hostname")) for r in sent] == [
        ("93.184.216.34", "images.example", "images.example"), ("2606:4700::1111", "cdn.example", "cdn.example")]


@pytest.mark.parametrize(("path", "code"), [
    ("/big.png", "image_too_large"),  # refused from its Content-Length
    ("/chunked-big", "image_too_large"),  # no length: cut off while streaming
    ("/missing.png", "remote_image_fetch_failed"),
])
async def test_size_cap_and_http_errors(origin: str, path: str, code: str) -> None:
    assert (await refused(fetcher("127.0.0.1"), f"{origin}{path}")).code == code


async def test_too_many_redirects_between_public_hosts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": f"/hop{len(request.url.path)}"})

    async def resolver(host: str, port: int) -> list:
        return [ipaddress.ip_address("93.184.216.34")]

    fetch = fetcher("images.example", resolver=resolver, transport=httpx.MockTransport(handler))
    error = await refused(fetch, "http://images.example/start")
    assert error.code == "remote_image_fetch_failed" and "redirects" in error.message


async def test_a_slow_origin_hits_the_deadline(origin: str) -> None:
    started = time.monotonic()
    error = await refused(fetcher("127.0.0.1", timeout_s=0.5), f"{origin}/slow.png")
    assert error.code == "remote_image_timeout"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(("url", "code"), [
    ("http://user:secret@127.0.0.1/image.png", "invalid_image_url"),
    ("http:///image.png", "invalid_image_url"),
    ("http://127.0.0.1:99999/image.png", "invalid_image_url"),
])
async def test_malformed_urls(url: str, code: str) -> None:
    assert (await refused(fetcher("127.0.0.1"), url)).code == code


async def test_an_unreachable_listed_host_is_a_400() -> None:
    async def resolver(host: str, port: int) -> list:
        raise OSError("no such host")

    error = await refused(fetcher("images.example", resolver=resolver), "http://images.example/a.png")
    assert error.code == "remote_image_unreachable"


async def test_a_fetched_non_image_is_refused_by_the_decoder(origin: str) -> None:
    settings = Settings(remote_image_hosts="127.0.0.1")
    app = create_app(scripted_engine(settings).orchestrator, settings, manage_engine=False)
    body = chat_body(messages=[user_message(image_part(f"{origin}/not-an-image"))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700::1111", True), ("8.8.8.8", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::", False),
])
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_host_patterns() -> None:
    policy = RemoteImagePolicy(("images.example", "*.cdn.example", "203.0.113.7", "2001:db8::1"))
    assert policy.host_allowed("images.example") and policy.host_allowed("IMAGES.example.")
    assert policy.host_allowed("a.b.cdn.example") and not policy.host_allowed("cdn.example")
    assert not policy.host_allowed("images.example.evil.test") and not policy.host_allowed("evilimages.example")
    assert policy.host_allowed("203.0.113.7") and policy.host_allowed("2001:db8:0::1")
    assert not policy.host_allowed("203.0.113.8")


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().remote_image_hosts == ()  # off by default
    monkeypatch.setenv("DIPTYCH_REMOTE_IMAGE_HOSTS", "Images.Example, *.cdn.example,[2001:db8::1]")
    assert Settings().remote_image_hosts == ("images.example", "*.cdn.example", "2001:db8::1")
    for bad in ("https://images.example", "images.example:443", "images.example/path", "a*.example", "*."):
        with pytest.raises(ValidationError, match="remote_image_hosts"):
            Settings(remote_image_hosts=bad)
