"""The host agent: a Mac (or any host) joins the cluster as a Node and runs its pods as native processes.

See ``docs/host-agent.md``. Entry points: :func:`run_agent` (async) and
``python -m turnout.agent`` / ``turnout agent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turnout.agent.config import AgentConfig, ConfigError, EnvMap

if TYPE_CHECKING:
    from turnout.agent.agent import run_agent

__all__ = ["AgentConfig", "ConfigError", "EnvMap", "run_agent"]


def __getattr__(name: str) -> Any:
    if name == "run_agent":  # imported lazily: the agent pulls in aiohttp and kopf
        from turnout.agent.agent import run_agent

        return run_agent
    raise AttributeError(name)
