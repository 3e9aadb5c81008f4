"""One call of the pipeline written out: batches, padding, overlap, out-of-memory back-off.

Split from :mod:`ct2pet_node.engine.pipeline`, which owns the stages; this
module owns the order in which batches go through them. It sees the pipeline
only through :class:`Stages` (public members), so the pipeline imports this
module and not the other way round. Arrays are numpy (N, H, W) float32 at the
edges, tensors (B, C, H, W) inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import structlog
import torch

from ct2pet_node.domain.request import Progress
from ct2pet_node.errors import EngineError

if TYPE_CHECKING:
    from ct2pet_node.engine.bridge import BridgeSchedule
    from ct2pet_node.engine.manifest import WeightsManifest
    from ct2pet_node.engine.options import ResolvedOptions

log = structlog.get_logger(__name__)


class Stages(Protocol):
    """What a translation uses of its :class:`~ct2pet_node.engine.pipeline.Pipeline`: public members only."""

    # Read, never written: lower_batch_size is the one lasting change a translation makes.
    device: torch.device
    image_size: int
    options: ResolvedOptions
    schedule: BridgeSchedule
    manifest: WeightsManifest
    batch_size: int

    def resize(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...

    def attenuation_map(self, ct01: torch.Tensor, kvp: float) -> torch.Tensor: ...

    def translate_ct01(
        self,
        ct01: torch.Tensor,
        kvp: float,
        steps: int | None,
        eta: float | None,
        generators: Sequence[torch.Generator] | None,
        progress: Callable[[int], None] | None = None,
        attenuation: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def lower_batch_size(self, batch_size: int) -> None: ...


def slice_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per slice, seeded from (seed, slice index) so batching cannot change the noise."""
    generators = []
    for index in indices:
        state = np.random.SeedSequence([int(seed) & (2**63 - 1), int(index)]).generate_state(1, np.uint64)[0]
        generators.append(torch.Generator("cpu").manual_seed(int(state) & (2**63 - 1)))
    return generators


@dataclass(slots=True)
class Translation:
    """One call of a pipeline: batching, padding, overlap and out-of-memory back-off.

    ``ct01`` is the region of the CT that covers the model's field of view
    (:class:`~ct2pet_node.domain.model_grid.GridMapping`), resized here to
    the model's matrix. The result is on the model grid, or, when
    ``out_shape`` is given, resized back to it before the output units are
    applied (the bare-array API of :meth:`Pipeline.__call__`).

    Without ``overlap`` each batch is uploaded, translated and finished in
    turn (the exact path). With it, a helper thread prepares the next batch
    (resize and attenuation map on the CPU, upload) and finishes the previous
    one (copy back, resize, output units) while the device samples.

    The batch size starts at the pipeline's and is this call's own: out of
    memory halves it for the rest of the call, and asks the pipeline (through
    :meth:`Stages.lower_batch_size`) to keep the lower size for later calls.
    """

    pipe: Stages
    ct01: np.ndarray
    kvp: float
    steps: int | None
    eta: float | None
    seed: int
    first_slice_index: int
    progress: Progress | None
    out_shape: tuple[int, int] | None = None
    out: np.ndarray = field(init=False)
    batch_size: int = field(init=False, default=1)
    total: int = field(init=False, default=0)
    done: int = field(init=False, default=0)

    def execute(self) -> np.ndarray:
        """(N, S, S) float32 PET in output units on the model grid, or (N, *out_shape)."""
        pipe, count = self.pipe, self.ct01.shape[0]
        shape = self.out_shape or (pipe.image_size, pipe.image_size)
        self.out = np.empty((count, *shape), dtype=np.float32)
        self.batch_size = max(1, int(pipe.batch_size))
        self.total = count * len(pipe.schedule.timesteps(self.steps))
        overlap = pipe.options.overlap
        pool = ThreadPoolExecutor(1, thread_name_prefix="engine-overlap") if overlap else None
        finishing: list[Future[None]] = []
        prefetched: tuple[range, Future[tuple[torch.Tensor, torch.Tensor]]] | None = None
        try:
            start = 0
            while start < count:
                batch = range(start, min(count, start + self.batch_size))
                prepared = None
                if prefetched is not None and prefetched[0] == batch:
                    prepared = prefetched[1].result()
                elif pool is not None:
                    prepared = self._prepare(batch)
                prefetched = None
                following = range(batch.stop, min(count, batch.stop + len(batch)))
                if pool is not None and len(following):
                    prefetched = (following, pool.submit(self._prepare, following))
                done_before = self.done
                try:
                    pet = self._translate(batch, prepared)
                except torch.OutOfMemoryError as exc:
                    self.done = done_before
                    self._back_off(exc)
                    continue
                if pool is not None:
                    finishing.append(pool.submit(self._finish, batch, *self._to_host(pet)))
                else:
                    self._finish(batch, pet)
                start = batch.stop
            for future in finishing:
                future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return self.out

    def _prepare(self, batch: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Helper thread: CT at model size and its attenuation map, both on the device."""
        pipe = self.pipe
        with torch.inference_mode():
            ct01 = torch.from_numpy(self.ct01[batch.start : batch.stop, None])
            ct01 = pipe.resize(ct01, (pipe.image_size, pipe.image_size))
            attenuation = pipe.attenuation_map(ct01, self.kvp)
            if pipe.device.type == "cuda":
                ct01 = ct01.pin_memory().to(pipe.device, non_blocking=True)
            return ct01, attenuation

    def _translate(self, batch: range, prepared: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        pipe, real = self.pipe, len(batch)
        if prepared is None:
            ct01 = torch.from_numpy(self.ct01[batch.start : batch.stop, None]).to(pipe.device)
            ct01, attenuation = pipe.resize(ct01, (pipe.image_size, pipe.image_size)), None
        else:
            ct01, attenuation = prepared
        first = batch.start + self.first_slice_index
        generators = slice_generators(self.seed, range(first, first + real))
        pad = self.batch_size - real if pipe.options.fixed_shapes else 0
        if pad > 0:
            # Compiled code and CUDA graphs are specialised to one batch shape: repeat the
            # last slice to fill it. Slices are independent, so the real ones are unchanged.
            ct01 = torch.cat([ct01, ct01[-1:].expand(pad, *ct01.shape[1:])])
            if attenuation is not None:
                attenuation = torch.cat([attenuation, attenuation[-1:].expand(pad, *attenuation.shape[1:])])
            generators += slice_generators(self.seed, range(first + real, first + real + pad))

        def advance(_: int) -> None:
            self.done += real
            if self.progress is not None:
                self.progress(self.done, self.total)

        pet = pipe.translate_ct01(ct01, self.kvp, self.steps, self.eta, generators, advance, attenuation)
        return pet[:real]

    def _to_host(self, pet: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Main thread: start the copy back; on CUDA into pinned memory, with an event to wait on."""
        if self.pipe.device.type != "cuda":
            return pet, None
        host = torch.empty(pet.shape, dtype=pet.dtype, pin_memory=True)
        host.copy_(pet, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _finish(self, batch: range, pet: torch.Tensor, event: Any = None) -> None:
        """To output units (after resizing to ``out_shape``, if given); refuses non-finite values."""
        with torch.inference_mode():
            if event is not None:
                event.synchronize()
            if self.out_shape is not None:
                pet = self.pipe.resize(pet, self.out_shape)
            values = pet[:, 0].float().cpu().numpy()
        if not np.isfinite(values).all():
            raise EngineError(
                f"the model produced non-finite values for slices {batch.start}..{batch.stop - 1}; "
                "try precision float32 or check the weights"
            )
        self.out[batch.start : batch.stop] = self.pipe.manifest.pet_scaling.to_output(values)

    def _back_off(self, exc: torch.OutOfMemoryError) -> None:
        pipe = self.pipe
        if self.batch_size <= 1:
            raise EngineError(
                f"out of {pipe.device} memory with one slice per batch; free the device or run on the CPU"
            ) from exc
        self.batch_size = max(1, self.batch_size // 2)
        if pipe.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("batch_out_of_memory", device=str(pipe.device), batch_size=self.batch_size)
        # The next call would run out of memory at the old size again.
        pipe.lower_batch_size(self.batch_size)
