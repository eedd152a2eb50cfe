"""LoRA adapters in a running transformers model, applied per row of a mixed batch.

Adapters are loaded into the model in place with transformers' PEFT integration (``load_adapter`` /
``delete_adapter``): each targeted linear layer becomes a PEFT ``LoraLayer`` holding every loaded adapter.
A batch may mix rows of several adapters and of the base model: before each forward pass the scheduler
sets :attr:`PeftAdapters.rows` to one name per row, and a forward pre-hook on every ``LoraLayer`` passes
it as PEFT's ``adapter_names`` (its mixed-batch forward: the base layer once for all rows, then each
adapter's low-rank update on its own rows). Everything here runs on the scheduler thread, between steps.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: PEFT's name for "no adapter" in ``adapter_names``
BASE = "__base__"


class PeftAdapters:
    """The adapters loaded into ``model`` and the per-row names of the next forward pass."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.loaded: set[str] = set()
        #: one adapter name (or ``BASE``) per row of the next forward; None while no adapter is loaded
        self.rows: list[str] | None = None
        self._hooked: set[int] = set()

    def load(self, name: str, path: str) -> None:
        """Load the PEFT folder ``path`` as ``name``; ValueError when it does not fit this model."""
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        if config.get("use_dora"):
            raise ValueError("DoRA adapters cannot share a batch with other rows (PEFT's mixed-batch forward "
                             "refuses them); merge it into a model of its own")
        try:
            with warnings.catch_warnings():  # "multiple adapters in the model": that is the point
                warnings.simplefilter("ignore", UserWarning)
                self.model.load_adapter(path, adapter_name=name)
        except Exception as exc:
            if name in (getattr(self.model, "peft_config", None) or {}):
                self.model.delete_adapter(name)
            raise ValueError(f"the adapter does not fit this model: {exc}") from exc
        self.loaded.add(name)
        self._hook()

    def unload(self, name: str) -> None:
        with warnings.catch_warnings():  # "active adapter deleted": rows name their adapters, none is active
            warnings.simplefilter("ignore", UserWarning)
            self.model.delete_adapter(name)
        self.loaded.discard(name)

    def set_rows(self, adapters: list[str | None]) -> None:
        """Name the adapter of each row of the next forward pass (None: the base model)."""
        self.rows = [a or BASE for a in adapters] if self.loaded else None

    def _hook(self) -> None:
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
                self._hooked.add(id(module))

    def _pre_forward(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if self.rows is not None:
            kwargs["adapter_names"] = self.rows
        return args, kwargs
