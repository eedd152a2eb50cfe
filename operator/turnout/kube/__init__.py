"""Kubernetes API access shared by the operator, the host agent and the benchmarks.

Credentials come from kubernetes_asyncio's kubeconfig and in-cluster loaders
(:mod:`turnout.kube.credentials`); calls go through its ApiClient
(:mod:`turnout.kube.client`); kopf logs in with the same credentials through
:func:`turnout.kube.session.aiohttp_session`.
"""

from turnout.kube.client import FIELD_MANAGER, KubeClient, api_path, object_path
from turnout.kube.credentials import Credentials, CredentialsError, load_credentials
from turnout.kube.errors import ApiError, MalformedWatchEvent, PermanentApiError, TransientApiError

__all__ = [
    "FIELD_MANAGER",
    "ApiError",
    "Credentials",
    "CredentialsError",
    "KubeClient",
    "MalformedWatchEvent",
    "PermanentApiError",
    "TransientApiError",
    "api_path",
    "load_credentials",
    "object_path",
]
