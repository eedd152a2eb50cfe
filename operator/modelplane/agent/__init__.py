"""The host agent: a Mac (or any host) joins the cluster as a Node and runs its pods as native processes.

See ``docs/host-agent.md``. Entry points: :func:`run_agent` (async) and
``python -m modelplane.agent`` / ``modelplane agent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelplane.agent.config import AgentConfig, ConfigError, EnvMap

if TYPE_CHECKING:
    from modelplane.agent.agent import run_agent

__all__ = ["AgentConfig", "ConfigError", "EnvMap", "run_agent"]


def __getattr__(name: str) -> Any:
    if name == "run_agent":  # imported lazily: the agent pulls in aiohttp and kopf
        from modelplane.agent.agent import run_agent

        return run_agent
    raise AttributeError(name)
