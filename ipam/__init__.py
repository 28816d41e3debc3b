"""pynet's IPAM: address pools and allocations kept in the store (docs/design.md, IPAM).

Imports only store/ and the standard library, so the plugin and the tools that find leaked
allocations can both use it. See `ipam.layout` for the key layout and `ipam.pools` for the
semantics.
"""

from pynet.ipam.layout import GLOBAL_SPACE, LOCAL_SPACE, PoolId
from pynet.ipam.pools import GATEWAY_REQUEST, Allocation, Ipam, PoolReply

__all__ = [
    "GATEWAY_REQUEST",
    "GLOBAL_SPACE",
    "LOCAL_SPACE",
    "Allocation",
    "Ipam",
    "PoolId",
    "PoolReply",
]
