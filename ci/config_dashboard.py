"""The dashboard's login settings: `dashboard.auth` (ci.config re-exports them).

    dashboard:
      public_read: true            # pages readable without login; actions always need one
      secret_key_file: /var/lib/hyperv-ci/dashboard-secret-key
      cookie_secure: null          # null: Secure when the request is https
      auth:
        mode: local                # local (accounts, `hyperv-ci users`) | proxy
        header: X-Remote-User      # proxy mode: the user name the proxy sets
        trusted_proxies: [10.0.0.2, 192.168.10.0/24]
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ci.config_base import _Strict

# A header name as RFC 9110 5.1 allows (a token), without "_": waitress drops
# every header whose name has an underscore (waitress/parser.py), so such a
# name would never arrive.
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^`|~-]+$"


class DashboardAuthConfig(_Strict):
    """Who may act: local accounts, or the user a trusted reverse proxy names."""

    mode: Literal["local", "proxy"] = "local"
    header: str = Field("X-Remote-User", pattern=_HEADER_NAME)
    # Only a request whose peer address (the TCP connection's) is in one of
    # these may name its user in `header`; from anywhere else it is ignored.
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        # "10.0.0.2" is a /32; "10.0.0.0/24" a network (host bits set are refused).
        if isinstance(value, list):
            return [str(v) for v in value]
        return value

    @model_validator(mode="after")
    def _proxy_needs_addresses(self) -> DashboardAuthConfig:
        if self.mode == "proxy" and not self.trusted_proxies:
            raise ValueError("auth.mode proxy needs trusted_proxies: the addresses of "
                             "the proxies allowed to name the user")
        return self

    def trusts(self, address: str | None) -> bool:
        """Whether a request from this peer address may name its user in the header."""
        if self.mode != "proxy" or not address:
            return False
        try:
            peer = ip_address(address)
        except ValueError:
            return False
        # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        mapped = getattr(peer, "ipv4_mapped", None)
        return any(peer in network or (mapped is not None and mapped in network)
                   for network in self.trusted_proxies)
