import pytest

from ct2pet_node.service.metrics import Registry


def test_counters_render_in_prometheus_text_format_with_labels() -> None:
    registry = Registry()
    registry.instances_received.inc()
    registry.instances_received.inc(2)
    registry.send_failures.inc(destination='pa"cs')
    registry.jobs.read_from(lambda: {(("state", "done"),): 3.0})
    text = registry.render()
    assert "# TYPE ct2pet_instances_received_total counter" in text
    assert "ct2pet_instances_received_total 3\n" in text
    assert 'ct2pet_send_failures_total{destination="pa\\"cs"} 1' in text
    assert 'ct2pet_jobs{state="done"} 3' in text


def test_counters_never_go_down() -> None:
    with pytest.raises(ValueError):
        Registry().series_refused.inc(-1)
