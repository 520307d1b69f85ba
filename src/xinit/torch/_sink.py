"""The torch sink: the engine's chunks written into torch tensors in place.

Each request of a run has a destination tensor: the tensor itself, or a view
of it (a complex tensor's ``view_as_real``, a DTensor's local shard), seen in
canonical order through ``layout`` (a weight stored ``(in, out)``, like Hugging
Face's ``Conv1D``, is written through its permuted view). The tensor object, its
storage and ``requires_grad`` never change.

- CPU tensors without overlapping elements are written through numpy views of
  their memory (any strides; bf16 and every other dtype as same-size integers):
  one single-threaded ``memcpy`` per contiguous range, transposed views 64 rows
  at a time (:func:`xinit.core.host_memory.write_range`). torch's ``copy_`` would
  run on its intra-op thread pool and compete for the cores with XLA drawing
  the next chunk. numpy writes bypass autograd's version counter, so the sink
  bumps it (``torch.autograd.graph.increment_version``) once per tensor.
- Other devices (and the rare CPU tensor numpy cannot view): ``copy_`` of each
  rectangular block from ``torch.from_dlpack`` of the chunk; CUDA copies are
  synchronized before the chunk's buffer is reused.
- Rows a request zeroes (an embedding's padding row) are zeroed when its
  tensor is complete.

A run that stops early (an error, or ``KeyboardInterrupt`` raised by code
inside the copy) bumps the version of every tensor it has written to; a
Ctrl-C (SIGINT) is deferred by the engine until no tensor is partly written.
"""

from __future__ import annotations

import numpy as np
import torch

from xinit.core import host_memory
from xinit.core.engine import Chunk, Request, flat_blocks, zero_rows_in_region
from xinit.core.layout import TORCH, Layout

__all__ = ["TorchSink", "bump_version"]

# Same-size integer dtypes: every element type is copied as its bits.
_BITS_TORCH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BITS_NUMPY = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}
_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8,
                           torch.int16, torch.int32, torch.int64})


def bump_version(tensor: torch.Tensor) -> None:
    """Mark ``tensor`` modified in place for autograd (as ``copy_`` would have)."""
    torch.autograd.graph.increment_version(tensor)


def _numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """A writable numpy view of a CPU tensor's elements (as same-size integers), or
    None where numpy cannot alias it safely (overlapping elements, conj/neg views)."""
    if t.device.type != "cpu" or t.is_conj() or t.is_neg():
        return None
    bits = _BITS_TORCH.get(t.element_size())
    if bits is None:
        return None
    if not t.is_contiguous():
        if any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape, strict=True)):
            return None  # expanded: copy_ raises as torch does
        overlap = getattr(torch, "_debug_has_internal_overlap", None)
        if overlap is not None and overlap(t) != 0:
            return None
    if t.dtype in _NUMPY_DTYPES:
        view = t.detach().numpy()
        return view.view(_BITS_NUMPY[view.itemsize])
    return t.detach().view(bits).numpy()


class TorchSink:
    """Writes each request's region into ``targets[i]`` in place.

    Args:
        requests: the run's requests.
        targets: one tensor per request, of the request's region shape in ``layouts[i]``.
        layouts: how each target maps to canonical order (default: identity).
    """

    in_place = True

    def __init__(self, requests: list[Request], targets: list[torch.Tensor],
                 layouts: list[Layout] | None = None):
        self.requests = requests
        self.targets = targets
        self.layouts = layouts or [TORCH] * len(targets)
        self._canon: dict[int, torch.Tensor] = {}
        self._numpy: dict[int, np.ndarray | None] = {}
        self._touched: set[int] = set()  # written through numpy, version not bumped yet

    def _views(self, i: int) -> tuple[torch.Tensor, np.ndarray | None]:
        canon = self._canon.get(i)
        if canon is None:
            t = self.targets[i]
            layout = self.layouts[i]
            if layout is TORCH or layout.is_identity(t.dim()):
                canon = t
            else:
                with torch.no_grad():  # a view outside autograd, as the writes are
                    canon = t.permute(layout.permutation(t.dim()))
            self._canon[i] = canon
            view = self._numpy[i] = _numpy_view(canon)
            if view is not None and t.is_contiguous() and t.nbytes >= host_memory.PREFAULT_MIN_BYTES:
                host_memory.prefault(_numpy_view(t).reshape(-1))  # map fresh pages at once
        return canon, self._numpy[i]

    def prepare(self, chunk: Chunk) -> None:
        """The destinations' views, made while the chunk computes."""
        for seg in chunk.segments:
            self._views(seg.index)

    def write(self, chunk: Chunk) -> bool:
        src_np = src_t = None
        cuda = set()
        for seg in chunk.segments:
            i = seg.index
            canon, view = self._views(i)
            if view is not None:
                if src_np is None:
                    src_np = np.asarray(chunk.array).reshape(-1)
                    src_np = src_np.view(_BITS_NUMPY[src_np.dtype.itemsize])
                self._touched.add(i)
                host_memory.write_range(view, seg.offset, src_np[seg.start : seg.start + seg.length])
                continue
            if src_t is None:
                src_t = torch.from_dlpack(chunk.array).reshape(-1)
            values = src_t[seg.start : seg.start + seg.length]
            with torch.no_grad():
                for index, start, stop in flat_blocks(canon.shape, seg.offset, seg.length):
                    block = canon[index]
                    block.copy_(values[start:stop].view(block.shape))
            if canon.device.type == "cuda":
                cuda.add(canon.device)
        for device in cuda:  # the chunk's buffer is reused next: torch must be done reading it
            torch.cuda.current_stream(device).synchronize()
        return False

    def finish(self, index: int) -> None:
        req = self.requests[index]
        rows = zero_rows_in_region(req) if req.size else []
        if rows:
            canon, _ = self._views(index)
            with torch.no_grad():
                for r in rows:
                    canon[r].zero_()
        if index in self._touched:
            self._touched.discard(index)
            bump_version(self.targets[index])
        self._canon.pop(index, None)
        self._numpy.pop(index, None)

    def stop(self) -> None:
        for i in sorted(self._touched):
            bump_version(self.targets[i])
        self._touched.clear()
