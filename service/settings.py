"""Service settings from the environment (prefix ``HEADWATER_``), e.g. ``HEADWATER_INDEX=demo-data/index``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.defaults import choice_error

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Host names a browser on this machine uses: always allowed unless ``allowed_hosts`` is given."""
WILDCARD_ADDRESSES = ("0.0.0.0", "::")
"""Listen addresses that are no host name a client would send."""
ANY_HOST = "*"


def bare_host(name: str) -> str:
    """A host name as compared: lower case, an IPv6 address without its brackets (``[::1]`` is ``::1``)."""
    return name.strip().lower().removeprefix("[").removesuffix("]")


def host_of(header: str) -> str:
    """The host name of a Host header, without its port: ``[::1]:8000`` is ``::1``, ``a.test:80`` is ``a.test``."""
    if header.startswith("["):
        return bare_host(header.partition("]")[0])
    return bare_host(header.partition(":")[0] if header.count(":") == 1 else header)


class Settings(BaseSettings):
    """Where the index is, where to listen, and the limits every request is held to."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_")

    index: Path = Field(Path("demo-data/index"), description="Index directory (its 'current' build is served).")
    host: str = Field("127.0.0.1", description="Address to listen on; 127.0.0.1 keeps it local.")
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="Key for admin and job endpoints (header X-API-Key).")
    max_k: int = Field(100, ge=1, description="Largest k a query may ask for.")
    max_body_bytes: int = Field(64_000, ge=1024, description="Larger request bodies are refused with 413.")
    max_controls: int = Field(16, ge=0, description="Most control prompts in one contrastive query.")
    device: str = Field("cpu", description="cpu, cuda or auto.")
    default_method: str = Field("auto", description="Method of a query that names none: auto (unlearning where an "
                                "uncached query re-scores its rows within 30 s here, else gradient) or a method name.")
    batch_window_ms: float = Field(4.0, ge=0, le=1000, description="Gradient queries arriving within this many "
                                   "milliseconds of each other share one sketch pass; 0 turns batching off.")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Host header values served (DNS-rebinding defence), comma-separated or a JSON list; '*' "
        "serves any. Default: localhost, 127.0.0.1, ::1 and `host` unless it is 0.0.0.0 or ::.")
    body_timeout_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False, description="A request body that has "
                                  "not fully arrived this many seconds after its headers is refused with 408.")
    max_model_queries_per_client: int = Field(2, ge=1, description="Queries that run the model (gradient, hybrid, "
                                              "unlearning, no completion) one client address may have in flight; "
                                              "more get 429.")

    @field_validator("default_method")
    @classmethod
    def known_method(cls, value: str) -> str:
        error = choice_error(value)
        if error is not None:
            raise ValueError(f"default_method {error}")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def host_list(cls, value: object) -> object:
        """The environment's text as a list: a JSON list, else comma-separated names."""
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def host_names(cls, value: list[str] | None) -> list[str] | None:
        """Names as compared (see :func:`bare_host`); an empty list, a port, scheme or path is an error."""
        if value is None:
            return None
        hosts = [bare_host(name) for name in value if name.strip()]
        if not hosts:
            raise ValueError("allowed_hosts is empty: name the hosts clients use, or '*' to serve any")
        bad = [name for name in hosts if name != ANY_HOST and (not re.fullmatch(r"[a-z0-9_.:-]+", name)
                                                            or name.count(":") == 1)]
        if bad:
            raise ValueError(f"allowed_hosts: {bad[0]!r} is not a host name (no scheme, port or path)")
        return hosts

    @model_validator(mode="after")
    def default_hosts(self) -> Self:
        """Without ``allowed_hosts``: this machine's names, and ``host`` when it is one address, not all."""
        if self.allowed_hosts is None:
            own = bare_host(self.host)
            self.allowed_hosts = [*LOCAL_HOSTS, *([own] if own not in (*WILDCARD_ADDRESSES, *LOCAL_HOSTS) else [])]
        return self

    def serves_host(self, header: str | None) -> bool:
        """Whether a request with this Host header (``name`` or ``name:port``) is served."""
        hosts = self.allowed_hosts or []
        return ANY_HOST in hosts or (bool(header) and host_of(header) in hosts)
