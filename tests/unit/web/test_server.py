"""The HTTP listeners' own limits: a request beyond the connections allowed at once is answered 503."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ct2pet_node.web.server import HttpListener


def test_a_connection_beyond_the_limit_is_answered_503_while_the_first_is_served() -> None:
    release = threading.Event()
    entered = threading.Event()

    async def slow(_request: Request) -> Response:
        entered.set()
        await run_in_threadpool(release.wait, 10)
        return PlainTextResponse("done")

    # uvicorn counts the connection asking: with 2 allowed, one held open leaves no room for another.
    listener = HttpListener("test", "127.0.0.1", 0, Starlette(routes=[Route("/", slow)]), "[test]", 0, 2)
    listener.start()
    host, port = listener.address
    answers: list[int] = []

    def first() -> None:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=20) as response:
            answers.append(response.status)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(10)
        try:
            urllib.request.urlopen(f"http://{host}:{port}/", timeout=10)
            second = 200
        except urllib.error.HTTPError as error:
            second = error.code
        assert second == 503
    finally:
        release.set()
        thread.join(20)
        listener.stop()
    assert answers == [200]
