"""``jobs resend`` and ``jobs rerun`` against a real node process and real storescp peers.

A job is done and delivered to one peer; a second peer is then added to the
configuration. Resend with the node stopped reaches it at the next start;
rerun and resend with the node running are picked up without a restart.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ctfactory import make_ct_series
from peers import DCMTK_ENV, NetNamespace, NodeProcess, StorescpPeer, dcmtk_tool, namespaces_unavailable

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.spool.jobstore import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCP_PORT = 11112
SLICES = 8
KINDS = ("secondary-capture", "pet")


class Node(NodeProcess):
    """``python -m ct2pet_node start`` in the namespace; its configuration rewritten between runs."""

    def __init__(self, namespace: NetNamespace, work: Path, weights: Path) -> None:
        super().__init__(namespace, work, [SCP_PORT])
        self.weights = weights

    def configure(self, *peers: StorescpPeer) -> None:
        toml = (
            f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(self.data_dir))}\n'
            "min_free_mb = 0\n[routing]\nseries_quiet_seconds = 1.0\nmin_slices = 5\n"
            f'[engine]\nweights = {json.dumps(str(self.weights))}\ndevice = "cpu"\nsteps = 3\n'
            f'[output]\nseries = {json.dumps(list(KINDS))}\ngrid = "model"\n[admin]\nlisten = "127.0.0.1:11180"\n'
        )
        for peer in peers:
            toml += (
                f'[[destinations]]\nname = "{peer.ae_title.lower()}"\nae_title = "{peer.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {peer.port}\n'
            )
        self.config.write_text(toml)

    def post(self, path: str) -> int:
        """The HTTP status the node's admin endpoint answers a POST to ``path`` with."""
        ask = (
            "import sys, urllib.request, urllib.error\n"
            "request = urllib.request.Request('http://127.0.0.1:11180' + sys.argv[1], method='POST')\n"
            "try:\n    print(urllib.request.urlopen(request, timeout=30).status)\n"
            "except urllib.error.HTTPError as error:\n    print(error.code)\n"
        )
        answered = self.namespace.run([sys.executable, "-c", ask, path], timeout=60)
        assert answered.returncode == 0, answered.stderr
        return int(answered.stdout)

    def job(self) -> Job:
        with JobStore.open(self.data_dir) as store:
            [job] = store.list_jobs()
        return job

    def wait_until(self, what: str, done: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            if self.job().state in (JobState.FAILED, JobState.REFUSED):
                break
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        raise AssertionError(f"{what} did not happen; job {self.job()}\n{tail}")


def _stores(peer: StorescpPeer) -> int:
    """C-STOREs the peer has answered (a re-sent instance counts again)."""
    return peer.log_path.read_text(errors="replace").count("Received Store Request")


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    if dcmtk_tool("storescp") is None or dcmtk_tool("storescu") is None:
        pytest.skip("dcmtk not found (apt install dcmtk)")
    with NetNamespace() as ns:
        yield ns


def test_resend_reaches_a_peer_added_later_and_rerun_remakes_the_same_series(
    namespace: NetNamespace, tmp_path: Path, tiny_weights: Path
) -> None:
    ct = make_ct_series(tmp_path / "ct", n=SLICES, images_in_acquisition=SLICES, spacing=(500 / 64, 500 / 64))
    results = SLICES * len(KINDS)
    node = Node(namespace, tmp_path / "node", tiny_weights)
    with (
        StorescpPeer(namespace, tmp_path / "first", port=11113, ae_title="FIRST") as first,
        StorescpPeer(namespace, tmp_path / "second", port=11114, ae_title="SECOND") as second,
    ):
        try:
            node.configure(first)
            node.start()
            sent = namespace.run(
                [dcmtk_tool("storescu"), "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), *map(str, ct)],
                env=DCMTK_ENV,
                timeout=120,
            )
            assert sent.returncode == 0, sent.stderr
            node.wait_until("first delivery", lambda: node.job().state is JobState.DONE)
            assert _stores(first) == results
            made = node.job().output_series_uids
            node.stop()

            # A second PACS joins; the node is stopped while the operator resends to it alone.
            node.configure(first, second)
            resent = node.cli("jobs", "resend", "1", "--to", "second")
            assert resent.returncode == 0, resent.stderr
            unknown = node.cli("jobs", "resend", "1", "--to", "third")
            assert unknown.returncode == 2 and "unknown destination 'third'" in unknown.stderr
            node.start()
            node.wait_until(
                "resend at start-up", lambda: node.job().state is JobState.DONE and _stores(second) == results
            )
            assert _stores(first) == results  # nothing doubled at the first destination

            # The node is running: rerun is picked up without a restart, same model, same series.
            rerun = node.cli("jobs", "rerun", "1")
            assert rerun.returncode == 0, rerun.stderr
            node.wait_until(
                "rerun",
                lambda: (
                    node.job().attempts == 2
                    and node.job().state is JobState.DONE
                    and _stores(first) == _stores(second) == 2 * results
                ),
            )
            assert node.job().output_series_uids == made
            received = {path.name for path in first.received()} | {p.name for p in second.received()}
            assert len(received) == results  # the same instances again, not a second series

            # The admin endpoint offers the same operation to scripts, with the same refusals.
            assert node.post("/jobs/1/resend") == 200
            node.wait_until(
                "resend over HTTP",
                lambda: (
                    node.job().state is JobState.DONE and _stores(first) == _stores(second) == 3 * results
                ),
            )
            assert node.post("/jobs/7/resend") == 409  # no such job: refused with a reason
            assert node.post("/jobs/1/explode") == 404
        finally:
            node.stop()
