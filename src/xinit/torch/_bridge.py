"""What the torch drop-ins need around the engine: keys, devices, dtypes, checks, ``fill_``."""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch

from xinit.core import engine
from xinit.core.errors import BoundsError, DtypeError, RangeError, UnwritableTensorError
from xinit.core.specs import Elementwise, Orthogonal, RealView, SparsePlan, Spec

from . import _dtensor
from ._sink import bump_version

_DTYPES = {
    torch.float16: np.dtype(jnp.float16),
    torch.bfloat16: np.dtype(jnp.bfloat16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
}
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def numpy_dtype(dtype: torch.dtype, fn: str) -> np.dtype:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise DtypeError(
            f"{fn}: tensors of dtype {dtype} are not supported; supported: "
            f"{[str(d) for d in (*_DTYPES, *_COMPLEX)]}"
        ) from None


def seed_from_torch(generator: torch.Generator | None) -> int:
    """A 63-bit seed drawn from ``generator`` (or torch's global RNG), advancing it.

    So ``torch.manual_seed(s)`` makes xinit reproducible, as users of a drop-in expect.
    """
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device).item())


def resolve_key(key, generator):
    if key is not None:
        if generator is not None:
            raise ValueError("pass either key= or generator=, not both")
        return key
    return seed_from_torch(generator)


@functools.cache
def _warn_no_jax_gpu(device: str) -> None:
    warnings.warn(
        f"JAX has no GPU backend here; xinit samples for {device} tensors on the CPU "
        "and copies them over (install jax[cuda] to sample on the GPU).",
        RuntimeWarning,
        stacklevel=4,
    )


def jax_device(device: torch.device):
    """The JAX device that matches a torch device (CPU when JAX has no GPU backend)."""
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
            return gpus[device.index if device.index is not None else torch.cuda.current_device()]
        except RuntimeError:
            _warn_no_jax_gpu(str(device))
    return jax.devices("cpu")[0]


def check_dtype(tensor: torch.Tensor, spec: Spec, plan, fn: str) -> np.dtype:
    """The numpy dtype to draw in, or the same error class torch raises."""
    dtype = tensor.dtype
    if dtype in _COMPLEX:
        complex_plan(tensor, spec, fn)
        return numpy_dtype(_COMPLEX[dtype], fn)
    np_dtype = numpy_dtype(dtype, fn)
    if engine.draws_random(plan) and np_dtype not in engine.FLOAT_DTYPES:
        raise DtypeError(
            f"{fn}: draws random floats and does not support {dtype} tensors; use a floating "
            "tensor (constant_, ones_, zeros_, eye_ and dirac_ fill integer and bool tensors)"
        )
    return np_dtype


def complex_plan(tensor: torch.Tensor, spec: Spec, fn: str):
    """The plan for a complex ``tensor``, as ``torch.nn.init`` draws complex values.

    The spec's complex form (:meth:`xinit.core.Spec.complex_plan`: random values
    on the real view, ``torch.view_as_real(tensor)``; fills as they are), or the
    error class torch raises where it has none (``trunc_normal_``; ``orthogonal_``,
    whose ``torch.sign`` rejects complex numbers although a unitary draw exists).
    """
    if isinstance(spec, Orthogonal):
        raise DtypeError(
            f"{fn}: complex tensors are not supported: torch.nn.init.orthogonal_ raises for "
            f"them too (torch.sign takes no complex numbers); got {tensor.dtype}"
        )
    try:
        return spec.complex_plan(tuple(tensor.shape))
    except DtypeError as err:
        raise DtypeError(f"{fn}: {err}; torch.nn.init raises for {tensor.dtype} here too") from None


def check_tensor(tensor, fn: str) -> None:
    """Reject what xinit cannot write into, with the error class torch uses."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{fn}: expected a torch.Tensor, got {type(tensor).__name__}")
    if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
        raise ValueError(
            f"{fn}: Attempted to use an uninitialized parameter (a lazy module's "
            f"{type(tensor).__name__}); run a forward pass first so its shape is known, "
            "or build the model on the meta device and use xinit.torch.materialize"
        )
    dispatch = getattr(type(tensor), "__torch_dispatch__", None)
    if dispatch is not getattr(torch.Tensor, "__torch_dispatch__", None) and not _dtensor.is_dtensor(tensor):
        raise TypeError(
            f"{fn}: tensor subclasses with __torch_dispatch__ other than DTensor "
            f"({type(tensor).__name__}) are not supported; initialize the tensor they wrap"
        )


def check_inference(tensor: torch.Tensor, fn: str) -> None:
    """An inference tensor can be written only inside ``torch.inference_mode()``, as in torch."""
    if tensor.is_inference() and not torch.is_inference_mode_enabled():
        raise UnwritableTensorError(
            f"{fn}: Inplace update to inference tensor outside InferenceMode is not allowed "
            "(torch raises this too); make a clone() to get a normal tensor, or call it inside "
            "torch.inference_mode()"
        )


def check_no_overlap(tensor: torch.Tensor, fn: str) -> None:
    """Reject an expanded view (elements sharing memory) before any RNG is used.

    torch's random ops raise this from their kernel, after the generator was
    looked up but before it advanced; torch's fills (``constant_``, ``eye_``,
    ``dirac_``) allow it, and so do xinit's, which run those same ops.
    """
    if tensor.numel() and any(st == 0 and n > 1 for n, st in zip(tensor.shape, tensor.stride(), strict=True)):
        raise UnwritableTensorError(
            f"{fn}: unsupported operation: more than one element of the written-to tensor "
            f"refers to a single memory location (an expanded view: shape {tuple(tensor.shape)}, "
            f"strides {tensor.stride()}); clone() the tensor first"
        )


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return _COMPLEX.get(dtype, dtype)


def check_params(plan, tensor: torch.Tensor, fn: str, *, filled_by_torch: bool = False) -> None:
    """The checks torch's own kernels make on the values a plan writes into ``tensor``.

    ``uniform_`` bounds must be finite in the tensor's dtype with ``b - a`` too
    (``uniform_(-1e5, 1e5)`` on float16 is an error, not infinities); a normal's
    std must be >= 0 and not NaN; a constant must convert to the dtype without
    overflow (torch's ``fill_`` decides, on a 2-element scratch tensor, unless
    ``filled_by_torch``: the caller writes it with ``fill_``, which checks first);
    the interval of a truncated normal must meet the dtype's finite range.
    """
    if isinstance(plan, SparsePlan):
        _check_std(plan.std, fn)
        return
    if not isinstance(plan, Elementwise):
        return
    if plan.family == "constant":
        if not filled_by_torch:
            _check_fill(plan.fparams[0], tensor.dtype, fn)
        return
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return  # eye and dirac fill any dtype; random families were refused by check_dtype
    finfo = torch.finfo(_real_dtype(tensor.dtype))
    if plan.family == "uniform":
        a, b = plan.fparams
        for name, bound in (("lower", a), ("upper", b)):
            if not finfo.min <= bound <= finfo.max:
                raise RangeError(
                    f"{fn}: the {name} bound {bound} is out of range for {tensor.dtype} "
                    f"(finite values in [{finfo.min}, {finfo.max}])"
                )
        if not b - a <= finfo.max:
            raise RangeError(
                f"{fn}: uniform_ expects to-from <= the largest {tensor.dtype} ({finfo.max}); "
                f"got from={a}, to={b}"
            )
    elif plan.family == "normal":
        _check_std(plan.fparams[1], fn)
    elif plan.family == "trunc_normal":
        mean, std, a, b = plan.fparams
        if a > finfo.max or b < finfo.min:
            raise RangeError(
                f"{fn}: [a, b] = [{a}, {b}] lies outside the finite range of {tensor.dtype} "
                f"([{finfo.min}, {finfo.max}]): every value would be infinite"
            )
        compute = torch.finfo(torch.float64 if finfo.bits == 64 else torch.float32)
        if abs(mean) > compute.max or (std > compute.max and not (math.isfinite(a) and math.isfinite(b))):
            raise RangeError(
                f"{fn}: mean={mean}, std={std} do not fit {compute.dtype}, which {tensor.dtype} "
                f"tensors are drawn in (a std beyond it is allowed only with finite [a, b], "
                "where the values are then uniform)"
            )


def _check_std(std: float, fn: str) -> None:
    if not std >= 0:  # NaN too
        raise BoundsError(f"{fn}: normal expects std >= 0.0, but found std {std}")


def _check_fill(value, dtype: torch.dtype, fn: str) -> None:
    try:
        torch.empty(2, dtype=dtype).fill_(value)  # (0-d and 1-element fills skip a check)
    except RuntimeError as e:
        raise RangeError(f"{fn}: {e} (got {value!r} for a {dtype} tensor)") from None


#: Families with no draw, written with torch's own ops (see :func:`write_structural_`).
STRUCTURAL = frozenset({"constant", "eye", "dirac"})


def write_structural_(tensor: torch.Tensor, plan: Elementwise) -> None:
    """Write a validated constant, eye or dirac plan with torch's own ops, in place.

    These have no randomness: a fill, then ones at the positions the kernel's
    index arithmetic marks. torch writes them at memory speed on the tensor's own
    device, in any strides and dtype (complex: ``1 + 0j``), where the JAX kernel
    plus a copy was 3-8x slower than ``torch.nn.init`` (the kernel divides the
    flat index, which XLA:CPU does one lane at a time). The values are the
    kernel's exactly (tested against :func:`xinit.core.engine.draw`).
    """
    if plan.family == "constant":
        tensor.fill_(plan.fparams[0])  # the same scalar cast as torch's constant_
        return
    tensor.zero_()
    if plan.family == "eye":
        tensor.diagonal().fill_(1)
        return
    n_in, _, _, per_group = plan.iparams  # dirac: w[g*per_group + d, d, *centre] = 1
    d = torch.arange(min(per_group, n_in), device=tensor.device)
    g = torch.arange(tensor.shape[0] // per_group, device=tensor.device)
    out_idx = (g[:, None] * per_group + d[None, :]).reshape(-1)
    centre = tuple(size // 2 for size in tensor.shape[2:])
    tensor[(out_idx, d.repeat(len(g)), *centre)] = 1


# Functions whose torch counterpart returns before touching a meta or zero-element
# tensor (and so leaves its version counter alone); every other no-op is an
# in-place op on nothing, which bumps it.
_UNTOUCHED = {
    "meta": frozenset({"trunc_normal_", "dirac_", "orthogonal_", "sparse_"}),
    "empty": frozenset({"orthogonal_"}),
}


def fill_(tensor: torch.Tensor, spec: Spec, key, generator, fn: str) -> torch.Tensor:
    """Validate, draw ``spec`` for ``tensor`` with a key, then write it in place.

    Every check comes first, in torch's order (the tensor's type, the shape, the
    dtype, the values torch's kernels would reject, an inference tensor outside
    inference mode, an expanded view for a random draw), also for meta and zero-element
    tensors, where torch skips some: then a random seed is drawn from
    ``generator`` or the global RNG, then values, then the tensor is written.
    So a failed call changes nothing and consumes no random state; nothing is
    written unless the whole draw succeeded. A meta or zero-element tensor is a
    no-op whose version counter moves as torch's does.

    Every program and chunk buffer the draw needs is prepared before the first
    byte is written, so running out of memory raises
    :class:`~xinit.core.errors.OutOfMemoryError` (a ``RuntimeError``, as torch's
    allocation failures, and a ``MemoryError``) with the tensor untouched. A
    Ctrl-C while a tensor is being written lets the write finish, then raises
    ``KeyboardInterrupt``: the tensor holds either its old values or the new ones.

    A DTensor gets its local shard written with the shard's slice of the values
    (see :mod:`xinit.torch._dtensor`); without ``key`` every rank takes the seed
    of its mesh's first rank. Its own version counter moves (on every rank) and its
    local tensor's does not, as with torch's in-place ops on a DTensor.
    """
    check_tensor(tensor, fn)
    shape = tuple(tensor.shape)
    plan = spec.plan(shape)
    np_dtype = check_dtype(tensor, spec, plan, fn)
    structural = isinstance(plan, Elementwise) and plan.family in STRUCTURAL
    real = not tensor.is_meta and tensor.numel() > 0
    check_params(plan, tensor, fn, filled_by_torch=structural and real)
    check_inference(tensor, fn)
    if not structural and not tensor.is_meta:
        check_no_overlap(tensor, fn)
    blocks = _dtensor.parts(tensor)  # a DTensor: its local shard's blocks and their regions
    if not real:
        if fn not in _UNTOUCHED["meta" if tensor.is_meta else "empty"]:
            bump_version(tensor)
        return tensor
    if structural and (plan.family == "constant" or not _dtensor.is_dtensor(tensor)):
        with torch.no_grad():  # a DTensor: torch's fill_ writes its shard (a shard's eye or
            write_structural_(tensor, plan)  # dirac is drawn, its region, below)
        return tensor
    if key is None and _dtensor.is_dtensor(tensor):
        key = _dtensor.agreed_seed(resolve_key(None, generator), _dtensor.meshes([tensor]))
    key = resolve_key(key, generator)
    device = jax_device(tensor.device)
    real_view = False
    if tensor.is_complex():
        plan = complex_plan(tensor, spec, fn)
        real_view = isinstance(plan, RealView)  # random values on torch.view_as_real(tensor)
        if not real_view:  # a shard's eye or dirac: filled in the complex dtype
            np_dtype = np.result_type(np_dtype, np.complex64)
    reqs = [engine.request(plan, key, shape, np_dtype, region=b.region, device=device) for b in blocks]
    targets = [torch.view_as_real(b.target) if real_view else b.target for b in blocks]
    engine.run(reqs, _dtensor.torch_sink(reqs, targets, [b.dtensor for b in blocks]))
    return tensor
