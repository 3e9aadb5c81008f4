"""The storage SCP with every failure status it answers counted in the node's metrics.

:class:`~ct2pet_node.net.scp.StorageScp` takes no metrics hook yet, and
``ct2pet_instances_rejected_total`` was never incremented. Until it does,
this subclass counts the status its C-STORE handler returns, without
touching how the handler decides it. When ``StorageScp`` calls
:meth:`NodeMetrics.instance_rejected` itself, this module goes and the
composition root builds a plain ``StorageScp``.

Importing it imports pynetdicom (through ``net``); the composition root does
so only when it builds a node.
"""

from __future__ import annotations

from typing import Any

from ct2pet_node.net.scp import SUCCESS, StorageScp
from ct2pet_node.service.metrics import NodeMetrics


class CountingStorageScp(StorageScp):
    """:class:`StorageScp` whose C-STORE answers other than success go to ``metrics``."""

    def __init__(self, *args: Any, metrics: NodeMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    def _handle_store(self, event: Any) -> int:
        status = super()._handle_store(event)
        if status != SUCCESS:
            self._metrics.instance_rejected(status)
        return status
