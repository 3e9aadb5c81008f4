import urllib.error
import urllib.request

import pytest

from ct2pet_node.errors import Ct2PetError
from ct2pet_node.service.admin import AdminServer, fetch_status
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.status import StatusReport

REPORT = StatusReport.from_json({"version": "x", "jobs": {"done": 1}})


@pytest.fixture
def admin() -> AdminServer:
    registry = NodeMetrics()
    registry.instances_received.inc(5)
    server = AdminServer("127.0.0.1", 0, "s3cret", lambda: REPORT, registry)
    server.start()
    yield server
    server.stop()


def test_status_needs_the_token_and_returns_json(admin: AdminServer) -> None:
    host, port = admin.address
    fetched = fetch_status(host, port, "s3cret")
    assert fetched == REPORT.to_json() and fetched["jobs"] == {"done": 1}
    with pytest.raises(Ct2PetError, match="answered 401"):
        fetch_status(host, port, "wrong")


def test_metrics_and_health(admin: AdminServer) -> None:
    host, port = admin.address
    request = urllib.request.Request(
        f"http://{host}:{port}/metrics", headers={"Authorization": "Bearer s3cret"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "ct2pet_instances_received_total 5.0\n" in response.read().decode()
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as response:
        assert response.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5)


def test_no_node_running_gives_a_clear_error() -> None:
    with pytest.raises(Ct2PetError, match="no node answers"):
        fetch_status("127.0.0.1", 9, "", timeout=1)
