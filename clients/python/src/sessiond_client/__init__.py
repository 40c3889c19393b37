"""Python client of sessiond, the gRPC session authority.

- :class:`SessionClient`: the session calls against a list of nodes (moves on to the next
  node when one is unavailable; writes carry a request id reused on retry).
- :class:`GatewayCache`: an LRU + TTL lookup cache that follows the revocation stream
  (resume after disconnects and cut-offs, resync when told) so that a logout handled
  anywhere is refused everywhere within milliseconds.

The generated messages and enums are re-exported as :mod:`sessiond_client.pb`.
"""

from sessiond.v1 import session_pb2 as pb

from .client import SessionClient, Unavailable
from .gateway import CacheStats, GatewayCache

__all__ = ["CacheStats", "GatewayCache", "SessionClient", "Unavailable", "pb"]
