"""Fetch the image URLs that chat requests name, when the operator allows it (off by default).

The risk is server-side request forgery: a client could make the server fetch from the
network it sits in (cloud metadata at 169.254.169.254, admin ports on localhost, private
services). So the URL and every redirect must name an allowlisted host, are resolved
here, and are refused if any address is not public, unless the allowlist names that IP
literally: an operator's deliberate choice, which a redirect never inherits. The request
then goes to the address that was checked, not to a second DNS answer, so a rebinding
resolver cannot swap it in between. Bodies are capped while they stream and the whole
fetch, redirects included, has one deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from diptych.server.errors import APIError
from diptych.settings import Settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "User-Agent": "diptych-image-fetch",
    "Accept": "image/png, image/jpeg, image/webp",
    # Compressed bodies would be inflated past the size cap before it could be checked.
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class RemoteImagePolicy:
    hosts: tuple[str, ...] = ()
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteImagePolicy:
        return cls(settings.remote_image_hosts, settings.remote_image_max_bytes, settings.remote_image_timeout_s,
                   settings.remote_image_max_redirects)

    @property
    def enabled(self) -> bool:
        return bool(self.hosts)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        literal = _ip_or_none(host)
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and literal is None:
                    return True
            elif host == entry or (literal is not None and literal == _ip_or_none(entry)):
                return True
        return False

    def lists_ip(self, address: IPAddress) -> bool:
        return any(_ip_or_none(entry) == address for entry in self.hosts)


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_global and not address.is_multicast


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 zone
        if address not in addresses:
            addresses.append(address)
    return addresses


def _error(param: str, message: str, code: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


class RemoteImageFetcher:
    """``fetch(url)`` → the image's bytes, or a 400 that says why not."""

    def __init__(
        self,
        policy: RemoteImagePolicy,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._transport = transport

    async def fetch(self, url: str, *, param: str) -> bytes:
        if not self.policy.enabled:
            raise _error(param, "remote image URLs are disabled on this server; send the image as a data URL",
                         "remote_images_disabled")
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._fetch(url, param)
        except TimeoutError as exc:
            raise _error(param, f"fetching the image took longer than {self.policy.timeout_s:g} s",
                         "remote_image_timeout") from exc
        except (httpx.HTTPError, OSError) as exc:
            logger.info("remote image fetch failed: %s", exc)
            raise _error(param, f"the image could not be fetched ({type(exc).__name__})",
                         "remote_image_unreachable") from exc

    async def _fetch(self, url: str, param: str) -> bytes:
        current = _parse(url, param)
        async with httpx.AsyncClient(transport=self._transport, trust_env=False, follow_redirects=False,
                                     timeout=self.policy.timeout_s, headers=_HEADERS) as client:
            for hop in range(self.policy.max_redirects + 1):
                address = await self._checked_address(current, param, redirected=hop > 0)
                request = _pinned_request(client, current, address)
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise _error(param, f"HTTP {response.status_code} without a Location",
                                         "remote_image_fetch_failed")
                        current = _parse(str(current.join(location)), param)
                        continue
                    if response.status_code != 200:
                        raise _error(param, f"the image URL answered HTTP {response.status_code}",
                                     "remote_image_fetch_failed")
                    return await self._read_capped(response, param)
                finally:
                    await response.aclose()
        raise _error(param, f"more than {self.policy.max_redirects} redirects", "remote_image_fetch_failed")

    async def _checked_address(self, url: httpx.URL, param: str, *, redirected: bool) -> IPAddress:
        host = url.host
        if not self.policy.host_allowed(host):
            where = "a redirect to " if redirected else ""
            raise _error(param, f"{where}host {host!r} is not on this server's list of image hosts",
                         "remote_image_not_allowed")
        literal = _ip_or_none(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolver(host, url.port or (443 if url.scheme == "https" else 80))
            except OSError as exc:
                raise _error(param, f"host {host!r} cannot be resolved", "remote_image_unreachable") from exc
            if not addresses:
                raise _error(param, f"host {host!r} cannot be resolved", "remote_image_unreachable")
        deliberate = literal is not None and not redirected and self.policy.lists_ip(literal)
        for address in addresses:
            if not deliberate and not is_public(address):
                where = "a redirect to " if redirected else ""
                raise _error(param, f"{where}{host!r} is a non-public address ({address}); refused",
                             "remote_image_not_allowed")
        return addresses[0]

    async def _read_capped(self, response: httpx.Response, param: str) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _error(param, f"the image is {declared} bytes, over the limit of {limit}", "image_too_large")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise _error(param, f"the image is over the limit of {limit} bytes", "image_too_large")
        return bytes(body)


def _parse(url: str, param: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _error(param, "not a valid URL", "invalid_image_url") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _error(param, "image URLs must be http(s) URLs with a host", "invalid_image_url")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _error(param, f"port {parsed.port} is out of range", "invalid_image_url")
    if parsed.userinfo:
        raise _error(param, "credentials in image URLs are not accepted", "invalid_image_url")
    return parsed


def _pinned_request(client: httpx.AsyncClient, url: httpx.URL, address: IPAddress) -> httpx.Request:
    """A GET to ``address``, the one that was checked, carrying the original host for HTTP and TLS."""
    host_header = url.netloc.decode("ascii")
    extensions = {}
    if url.scheme == "https" and _ip_or_none(url.host) is None:
        extensions["sni_hostname"] = url.host  # TLS checks the certificate against this name
    return client.build_request("GET", url.copy_with(host=str(address)), headers={"Host": host_header},
                                extensions=extensions)
