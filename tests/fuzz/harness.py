"""A running storage SCP on a free loopback port, for the fuzz, hostile-input, TLS and full-disk tests.

Import as ``from fuzz.harness import RunningScp`` (``tests/`` is on the path).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.net.scp import StorageScp
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

CALLING_AE = "SCANNER"


def node_config(data_dir: Path, min_free_mb: int = 0, timeout: float = 5.0, **security: Any) -> Config:
    """The embedded default, on loopback, with ``data_dir`` and [security] overrides."""
    config = load_config()
    node = dataclasses.replace(
        config.node,
        data_dir=data_dir,
        host="127.0.0.1",
        min_free_mb=min_free_mb,
        network_timeout_seconds=timeout,
    )
    return dataclasses.replace(config, node=node, security=dataclasses.replace(config.security, **security))


class RunningScp:
    """Spool, job store and :class:`StorageScp` on ``config``'s data directory; stop() in teardown."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = config.node.data_dir
        self.spool = InstanceSpool(self.data_dir, config.node.min_free_mb)
        self.store = JobStore.open(self.data_dir)
        self.stored: list[InstanceRecord] = []
        self.scp = StorageScp(
            config.node, config.security, self.spool, self.store, self.stored.append, address=("127.0.0.1", 0)
        )
        self.scp.start()

    @property
    def port(self) -> int:
        return self.scp.port

    def _ae(self, calling: str = CALLING_AE) -> AE:
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(Verification)
        return ae

    def echo(self, tls: ssl.SSLContext | None = None) -> bool:
        """Whether a C-ECHO succeeds on a fresh association."""
        assoc = self._ae().associate(
            "127.0.0.1",
            self.port,
            ae_title=self.config.node.ae_title,
            tls_args=(tls, "localhost") if tls else None,
        )
        if not assoc.is_established:
            _close_client_socket(assoc)
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and int(status.Status) == 0
        finally:
            assoc.release()

    def wait_idle(self, seconds: float = 20.0) -> bool:
        """No association is active within ``seconds``, so the next one gets a slot.

        A successful echo alone does not say that: its own association holds a
        slot until its thread ends, and connections dropped by a campaign hold
        theirs until the network timeout.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.scp._ae.active_associations:
                return True
            time.sleep(0.05)
        return False

    def send(self, items: list[Dataset | Path]) -> list[int | None]:
        """C-STORE each item on one association; the status of each (None: no response)."""
        assoc = self._ae().associate("127.0.0.1", self.port, ae_title=self.config.node.ae_title)
        assert assoc.is_established, "the SCP refused the association"
        statuses: list[int | None] = []
        try:
            for item in items:
                if not assoc.is_established:
                    statuses.append(None)
                    continue
                status = assoc.send_c_store(item)
                statuses.append(int(status.Status) if status and "Status" in status else None)
        finally:
            if assoc.is_established:
                assoc.release()
        return statuses

    def spooled(self) -> list[Path]:
        return sorted((self.data_dir / "spool").rglob("*.dcm"))

    def stop(self) -> None:
        self.scp.stop(timeout=1)
        self.store.close()


def _close_client_socket(assoc: Any) -> None:
    # pynetdicom's requestor leaves its socket open when the peer drops the
    # connection mid-negotiation (a TLS port talked to in plain TCP).
    wrapper = getattr(assoc.dul, "socket", None)
    raw = getattr(wrapper, "socket", None)
    if raw is not None:
        raw.close()


def raw_connection(port: int, timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection to the SCP, for sending hand-made PDUs."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def rss_kib() -> int:
    """This process's resident set size, KiB (VmRSS of /proc/self/status)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def peak_rss_kib() -> int:
    """This process's peak resident set size so far, KiB (VmHWM)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def examples(default: int) -> int:
    """Hypothesis examples per campaign: ``default`` in CI, ``CT2PET_FUZZ_EXAMPLES`` for a long run."""
    return int(os.environ.get("CT2PET_FUZZ_EXAMPLES", default))
