import pytest

from ct2pet_node.errors import Ct2PetError
from ct2pet_node.service.admin import fetch_status

# The endpoint itself, and fetch_status against it: tests/unit/web/test_app.py.


def test_no_node_running_gives_a_clear_error() -> None:
    with pytest.raises(Ct2PetError, match="no node answers"):
        fetch_status("127.0.0.1", 9, "", timeout=1)
