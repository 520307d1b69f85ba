"""What the torch drop-ins need around the engine: keys, devices, dtypes, checks, ``fill_``."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch

from xinit.core import engine
from xinit.core.errors import DtypeError
from xinit.core.specs import Elementwise, Orthogonal, Spec

from ._sink import TorchSink

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
    if dispatch is not getattr(torch.Tensor, "__torch_dispatch__", None):
        raise TypeError(
            f"{fn}: tensor subclasses with __torch_dispatch__ ({type(tensor).__name__}, e.g. "
            "DTensor) are not supported yet; initialize the local tensor (e.g. "
            "dtensor.to_local()) or a full tensor and distribute it"
        )


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


def fill_(tensor: torch.Tensor, spec: Spec, key, generator, fn: str) -> torch.Tensor:
    """Validate, draw ``spec`` for ``tensor`` with a key, then write it in place.

    Nothing is written (and no RNG state is consumed) unless validation passed.
    Every program and chunk buffer the draw needs is prepared before the first
    byte is written, so running out of memory raises
    :class:`~xinit.core.errors.OutOfMemoryError` (a ``RuntimeError``, as torch's
    allocation failures, and a ``MemoryError``) with the tensor untouched. A
    Ctrl-C while a tensor is being written lets the write finish, then raises
    ``KeyboardInterrupt``: the tensor holds either its old values or the new ones.
    """
    check_tensor(tensor, fn)
    shape = tuple(tensor.shape)
    plan = spec.plan(shape)
    np_dtype = check_dtype(tensor, spec, plan, fn)
    if tensor.is_meta or tensor.numel() == 0:
        return tensor
    if isinstance(plan, Elementwise) and plan.family in STRUCTURAL:
        with torch.no_grad():
            write_structural_(tensor, plan)
        return tensor
    key = resolve_key(key, generator)
    device = jax_device(tensor.device)
    target = tensor
    if tensor.is_complex():  # random values on the real view (torch.view_as_real)
        plan = complex_plan(tensor, spec, fn)
        target = torch.view_as_real(tensor)
    req = engine.request(plan, key, shape, np_dtype, device=device)
    engine.run([req], TorchSink([req], [target]))
    return tensor
