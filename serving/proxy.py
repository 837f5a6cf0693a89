"""Who sent a request and over what: a socket peer's address, or what a trusted proxy in front says of the client."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from serving.errors import ApiError


@dataclass(frozen=True)
class ProxyTrust:
    """gunicorn's forwarded_allow_ips and secure_scheme_headers, applied as gunicorn's own workers apply them: a peer
    on the list (a proxy in front) may say who the client is (X-Forwarded-For) and that it came over TLS (the scheme
    headers); from any other peer they are only what the client claims: passed on as headers, changing nothing.
    gunicorn itself takes REMOTE_ADDR from the PROXY protocol only; X-Forwarded-For is what ingresses send."""

    any_peer: bool  # "*": every peer is a proxy (gunicorn's "disable checking")
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    scheme_headers: dict[bytes, bytes]  # h11's lower-case header name -> the exact value that means https

    @classmethod
    def from_config(cls, cfg: Any) -> ProxyTrust:
        allowed = list(cfg.forwarded_allow_ips)
        return cls("*" in allowed, tuple(ipaddress.ip_network(entry) for entry in allowed if entry != "*"),
                   {name.lower().encode("latin-1"): value.encode("latin-1")
                    for name, value in cfg.secure_scheme_headers.items()})

    def client_and_scheme(self, peer: Any, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
        """REMOTE_ADDR, REMOTE_PORT and wsgi.url_scheme of a request from `peer` (a UNIX socket's peer is trusted, as
        gunicorn trusts it: only the host can connect there)."""
        address, port = host_and_port(peer)
        variables = {"REMOTE_ADDR": address, "REMOTE_PORT": port, "wsgi.url_scheme": "http"}
        if not (self.any_peer or not isinstance(peer, tuple) or self.listed(address)):
            return variables
        variables["wsgi.url_scheme"] = self.scheme(headers)
        client = self.forwarded_client(headers)
        if client is not None:
            variables["REMOTE_ADDR"] = client
            del variables["REMOTE_PORT"]  # the proxy's: the client's port is not forwarded
        return variables

    def listed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def scheme(self, headers: list[tuple[bytes, bytes]]) -> str:
        """https when the proxy's scheme header says so; headers that disagree are refused, as gunicorn does."""
        says_tls = {value == self.scheme_headers[name] for name, value in headers if name in self.scheme_headers}
        if len(says_tls) > 1:
            raise ApiError(400, "bad_request", "the proxy's scheme headers disagree on whether the request came over "
                                               "TLS (gunicorn's secure_scheme_headers)")
        return "https" if says_tls == {True} else "http"

    def forwarded_client(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The client's address in X-Forwarded-For: the rightmost hop that is not one of our proxies, since each proxy
        appends the address it got the request from and the hops left of our first proxy's are whatever the client
        wrote. None when the header is absent or that hop is not an IP address (the peer's address stands)."""
        hops = [hop.strip() for name, value in headers if name == b"x-forwarded-for"
                for hop in value.decode("latin-1").split(",")]
        if not hops:
            return None
        hop = next((hop for hop in reversed(hops) if not self.listed(hop)), hops[0])
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            return None


def host_and_port(address: Any) -> tuple[str, str]:
    """A socket address as the environ's strings: (host, port) of an IP one, (path, "") of a UNIX socket's."""
    if isinstance(address, tuple):
        return str(address[0]), str(address[1])
    return str(address or ""), ""
