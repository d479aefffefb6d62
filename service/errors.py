"""The service's own error kinds, raised by the application layer and mapped to a status in ``service.main``.

They subclass ``HeadwaterError`` like every error raised on purpose; the library's errors say what went
wrong, these say what it means for the request (refused, missing, unavailable).
"""

from __future__ import annotations

from attribution.errors import ConfigError, HeadwaterError


class RequestLimitError(ConfigError):
    """A request asks for more than this server allows (k, control prompts): the client's fault."""


class NotFoundError(HeadwaterError):
    """The example, step or job asked for is not in the served index."""


class IndexUnavailableError(HeadwaterError):
    """No index can be served: still loading, or loading (a reload) failed; the cause is chained."""


class NoMatchError(ConfigError):
    """A query can match nothing in the served index (an unknown subset, steps outside the data, no query terms):
    the client's fault, answered 422 with what the index does hold."""
