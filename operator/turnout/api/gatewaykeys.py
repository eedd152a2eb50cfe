"""The Secret through which the operator hands the gateway its API keys, hashed.

For every ModelDeployment with ``spec.apiKeySecretRef`` the operator reads the key and writes its SHA-256
(lower-case hex) under the ModelDeployment's name into the Secret :data:`GATEWAY_KEYS_SECRET` of that
namespace; the gateway may read that Secret and no other, and compares ``key_digest(bearer)`` with it.
"""

from __future__ import annotations

import hashlib

#: The Secret, one per namespace: ``data[<ModelDeployment name>]`` is the hex SHA-256 of its key.
GATEWAY_KEYS_SECRET = "turnout-gateway-keys"


def key_digest(key: bytes) -> str:
    """The hex SHA-256 of an API key, as published and compared."""
    return hashlib.sha256(key).hexdigest()
