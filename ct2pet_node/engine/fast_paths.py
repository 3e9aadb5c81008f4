"""The torch side of the engine's fast paths: compile with a fallback, CUDA graphs, CUDA math modes.

Each piece wraps a callable and keeps its contract (same arguments, same
result up to the rounding the path is known to change), so the pipeline
writes one sampling loop whatever is switched on. Which paths are on is
decided in :mod:`ct2pet_node.engine.options`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
import torch

if TYPE_CHECKING:
    from ct2pet_node.engine.networks import Networks

log = structlog.get_logger(__name__)

TensorFn = Callable[..., torch.Tensor]


class CompiledOrEager:
    """``torch.compile(fn)``, falling back to ``fn`` for good when compiling fails.

    torch.compile is lazy: a missing C++ compiler, an unsupported Python or a
    backend bug shows up at the first call, as a RuntimeError (dynamo's and
    inductor's errors derive from it), an ImportError or an OSError. The
    fallback is logged once (``compile_failed``) and never retried, so a
    broken toolchain costs one failed attempt, not one per batch.
    """

    def __init__(self, name: str, fn: TensorFn, mode: str | None = None) -> None:
        self.name = name
        self.eager = fn
        self.mode = mode
        self.compiled: TensorFn | None
        try:
            self.compiled = torch.compile(fn, mode=mode, dynamic=False)
        except (RuntimeError, ImportError, OSError) as exc:
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        log.warning(
            "compile_failed", network=self.name, error=f"{type(exc).__name__}: {exc}"[:400], using="eager"
        )
        self.compiled = None

    @property
    def active(self) -> bool:
        """Whether calls still go to the compiled code."""
        return self.compiled is not None

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.compiled is not None:
            try:
                if self.mode == "reduce-overhead":
                    # Each call is a new step: its outputs may overwrite the last call's, which
                    # the sampler has consumed by then.
                    torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args)
            except torch.OutOfMemoryError:
                raise  # not a compiler problem: the caller retries with a smaller batch
            except (RuntimeError, ImportError, OSError) as exc:
                self._give_up(exc)
        return self.eager(*args)


class GraphedCall:
    """Replay one captured CUDA graph of ``fn`` per input shape (CUDA only).

    ``fn`` must take tensors only, run on the current CUDA stream without
    host synchronisation, and allocate nothing it keeps. Inputs are copied
    into static buffers, the graph replays the captured kernels, and a copy of
    the static output is returned, so a later replay cannot overwrite a
    result the caller still holds. Autocast inside ``fn`` must have its cast
    cache disabled (``cache_enabled=False``): cached casts would be freed
    memory at replay.
    """

    def __init__(self, fn: TensorFn, warmup_calls: int = 3) -> None:
        self.fn = fn
        self.warmup_calls = warmup_calls
        self.graphs: dict[tuple[Any, ...], tuple[list[torch.Tensor], torch.Tensor, Any]] = {}
        self.pool: Any = None

    @staticmethod
    def _key(args: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
        return tuple((tuple(a.shape), a.dtype, a.stride(), str(a.device)) for a in args)

    def _capture(self, args: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], torch.Tensor, Any]:
        static_in = [a.clone() for a in args]
        # Warm up on a side stream, as the CUDA-graph documentation requires (lazy init,
        # cuDNN autotuning and allocator growth must not happen during capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(*static_in)
        self.pool = graph.pool()
        log.info("cuda_graph_captured", shapes=[tuple(a.shape) for a in args])
        return static_in, static_out, graph

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = self._key(args)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(args)
        static_in, static_out, graph = entry
        for buffer, value in zip(static_in, args, strict=True):
            buffer.copy_(value)
        graph.replay()
        return static_out.clone()


@contextlib.contextmanager
def cuda_math(device: torch.device, precision: str, benchmark: bool) -> Iterator[None]:
    """CUDA math modes for one translation; a no-op on the CPU.

    ``float32`` switches TF32 off for convolutions and matmuls (PyTorch
    allows it for cuDNN convolutions by default, which would make the
    "exact" path a 10-bit-mantissa path); every other precision allows it.
    ``benchmark`` lets cuDNN time its algorithms for the fixed shapes of the
    sampling loop (a choice that can change rounding, so only for fast paths).
    The previous settings are restored on exit.
    """
    if device.type != "cuda":
        yield
        return
    tf32 = precision != "float32"
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with torch.backends.cudnn.flags(
            enabled=True, benchmark=benchmark, deterministic=False, allow_tf32=tf32
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def cuda_free_bytes(device: torch.device) -> float:
    """Free memory of a CUDA device, bytes, counting what PyTorch's cache holds but does not use."""
    free, _total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return float(free + cached_unused)


_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_for(
    device: torch.device, precision: str, cuda_graphs: bool
) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context for ``precision`` on ``device``; a no-op at float32."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    # A graph replays kernels, not casts: the autocast cache would hold freed copies.
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=not cuda_graphs)


def network_calls(
    nets: Networks,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    compile_: bool,
    cuda_graphs: bool,
) -> tuple[TensorFn, TensorFn, TensorFn]:
    """The UNet, encode and decode callables, in float32 out, compiled and/or graphed as asked."""

    def unet(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast():
            out: torch.Tensor = nets.unet(x_in, t).float()
        return out

    def encode(image: torch.Tensor) -> torch.Tensor:
        with autocast():
            out: torch.Tensor = nets.vqgan.encode(image).float()
        return out

    def decode(z: torch.Tensor) -> torch.Tensor:
        with autocast():
            out: torch.Tensor = nets.vqgan.decode(z).float()
        return out

    if compile_:
        # With graphs too, compile's own CUDA-graph mode replaces the hand capture.
        mode = "reduce-overhead" if cuda_graphs else None
        return (
            CompiledOrEager("unet", unet, mode),
            CompiledOrEager("vqgan_encode", encode),
            CompiledOrEager("vqgan_decode", decode),
        )
    if cuda_graphs:
        return GraphedCall(unet), encode, decode
    return unet, encode, decode
