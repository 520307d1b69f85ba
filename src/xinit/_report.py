"""The fidelity report behind ``xinit report``: xinit against the framework it replaces.

For every initializer and backend (``core``, ``torch``, ``flax``) the report draws
one seeded sample from xinit and one from the reference implementation
(``torch.nn.init``, or ``jax.nn.initializers`` for the JAX-native family) on the
same shape, and checks:

- the observed mean and standard deviation against the formula's;
- a two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``), p > 1e-4;
- bounds (uniform and truncated families), exact equality (constant, ones, zeros,
  eye, dirac), orthonormality (orthogonal) and zeros per column (sparse);
- bit identity: the flax initializer's output equals the torch adapter's output
  moved into flax layout (and the core sampler's output equals the adapter's).

Seeds are fixed and every sample has at least 20,000 elements, so the verdicts are
deterministic for a given jax/torch version. This module is private: the command
line (:mod:`xinit.cli`) is its interface.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("core", "torch", "flax")
KS_MIN_P = 1e-4
STD_RTOL = 0.03  # observed std within 3% of the formula (>= 8 standard errors at n >= 20k)
MEAN_ZTOL = 6.0  # observed mean within 6 standard errors of the formula's mean
ORTHO_ATOL = 1e-4


@dataclass(frozen=True)
class Case:
    """One initializer with fixed arguments on one shape.

    ``family`` is ``"torch"`` (the ``torch.nn.init`` names; ``shape`` in torch
    layout ``(out, in, *k)``) or ``"jax"`` (the ``jax.nn.initializers`` names;
    ``shape`` in flax layout ``(*k, in, out)``). ``check`` is ``"stats"``,
    ``"exact"``, ``"orthogonal"`` or ``"sparse"``.
    """

    name: str
    args: dict = field(default_factory=dict, hash=False)
    shape: tuple[int, ...] = (256, 128)
    family: str = "torch"
    check: str = "stats"

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={_fmt_arg(v)}" for k, v in self.args.items())
        return f"{self.name}({args})"


def _fmt_arg(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _short_label(case: Case) -> str:
    args = ",".join(f"{k}={_fmt_arg(v)}" for k, v in case.args.items())
    return f"{case.name}({args})"


CASES: tuple[Case, ...] = (
    Case("uniform", {"a": -0.5, "b": 1.5}),
    Case("normal", {"mean": 0.1, "std": 0.5}),
    Case("trunc_normal", {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}),
    Case("constant", {"val": 0.3}, (64, 32), check="exact"),
    Case("ones", {}, (64, 32), check="exact"),
    Case("zeros", {}, (64, 32), check="exact"),
    Case("eye", {}, (64, 96), check="exact"),
    Case("dirac", {"groups": 2}, (32, 16, 3, 3), check="exact"),
    Case("xavier_uniform", {"gain": 5 / 3}, (96, 64, 3, 3)),
    Case("xavier_normal", {"gain": 1.0}),
    Case("kaiming_uniform", {"a": math.sqrt(5)}, (96, 64, 3, 3)),
    Case("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}, (96, 64, 3, 3)),
    Case("orthogonal", {"gain": 1.0}, check="orthogonal"),
    Case("orthogonal", {"gain": 2.0}, (96, 32, 3, 3), check="orthogonal"),
    Case("sparse", {"sparsity": 0.5, "std": 0.01}, (1024, 32), check="sparse"),
    Case("variance_scaling", {"scale": 2.0, "mode": "fan_out", "distribution": "uniform"},
         (3, 3, 64, 96), family="jax"),
    Case("variance_scaling",
         {"scale": 1.0, "mode": "fan_geo_avg", "distribution": "truncated_normal"},
         (128, 256), family="jax"),
    Case("lecun_normal", {}, (3, 3, 64, 96), family="jax"),
    Case("lecun_uniform", {}, (128, 256), family="jax"),
    Case("glorot_normal", {}, (128, 256), family="jax"),
    Case("glorot_uniform", {}, (3, 3, 64, 96), family="jax"),
    Case("he_normal", {}, (3, 3, 64, 96), family="jax"),
    Case("he_uniform", {}, (128, 256), family="jax"),
    Case("truncated_normal", {"stddev": 0.02}, (128, 256), family="jax"),
)

QUICK = ("uniform", "trunc_normal", "constant", "kaiming_uniform", "orthogonal", "glorot_normal")

# name -> formula, as `xinit list` prints it (fan_in/fan_out per the layout's in/out axes).
FORMULAS: dict[str, str] = {
    "uniform": "U(a, b)",
    "normal": "N(mean, std^2), untruncated",
    "trunc_normal": "N(mean, std^2) restricted to [a, b]; a, b absolute (torch)",
    "constant": "val everywhere",
    "ones": "1 everywhere",
    "zeros": "0 everywhere",
    "eye": "identity matrix (2-D)",
    "dirac": "w[g*out/groups + d, d, k//2...] = 1, else 0 (3/4/5-D)",
    "xavier_uniform": "U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))",
    "xavier_normal": "N(0, gain^2 * 2 / (fan_in + fan_out)), untruncated",
    "kaiming_uniform": "U(-b, b), b = gain * sqrt(3 / fan_mode), gain = calculate_gain(nl, a)",
    "kaiming_normal": "N(0, gain^2 / fan_mode), untruncated",
    "orthogonal": "gain * Q, Q (semi-)orthogonal from QR of a normal matrix (rows x prod(rest))",
    "sparse": "N(0, std^2) with ceil(sparsity * rows) zeros in every column",
    "variance_scaling": "var = scale / n, n = fan_in|fan_out|fan_avg|fan_geo_avg; "
                        "uniform, normal, or truncated_normal (+-2 sigma, rescaled by 1/0.8796)",
    "lecun_normal": "variance_scaling(1, fan_in, truncated_normal)",
    "lecun_uniform": "variance_scaling(1, fan_in, uniform)",
    "glorot_normal": "variance_scaling(1, fan_avg, truncated_normal)",
    "glorot_uniform": "variance_scaling(1, fan_avg, uniform)",
    "he_normal": "variance_scaling(2, fan_in, truncated_normal)",
    "he_uniform": "variance_scaling(2, fan_in, uniform)",
    "truncated_normal": "stddev * N(0, 1) restricted to [lower, upper] (std units, jax)",
}

TORCH_NAMES = tuple(dict.fromkeys(c.name for c in CASES if c.family == "torch"))
JAX_NAMES = tuple(dict.fromkeys(c.name for c in CASES if c.family == "jax"))


# ------------------------------------------------------------------ formulas


# jax.nn.initializers' variance-scaling aliases: (scale, mode, distribution).
_JAX_ALIASES = {
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
}


def _fans_torch(shape) -> tuple[int, int]:
    rf = math.prod(shape[2:])
    return shape[1] * rf, shape[0] * rf


def _fans_flax(shape) -> tuple[int, int]:
    rf = math.prod(shape[:-2])
    return shape[-2] * rf, shape[-1] * rf


def _trunc_std(lo_sd: float, hi_sd: float) -> float:
    from scipy.stats import truncnorm

    return float(truncnorm(lo_sd, hi_sd).std())


def expected(case: Case) -> tuple[float, float, tuple[float, float] | None]:
    """``(mean, std, bounds)`` that the formula gives for ``case`` (bounds may be None)."""
    a = case.args
    if case.family == "torch":
        fan_in, fan_out = _fans_torch(case.shape)
    else:
        fan_in, fan_out = _fans_flax(case.shape)
    name = case.name
    if name == "uniform":
        return (a["a"] + a["b"]) / 2, (a["b"] - a["a"]) / math.sqrt(12), (a["a"], a["b"])
    if name == "normal":
        return a["mean"], a["std"], None
    if name == "trunc_normal":
        lo, hi = (a["a"] - a["mean"]) / a["std"], (a["b"] - a["mean"]) / a["std"]
        from scipy.stats import truncnorm

        dist = truncnorm(lo, hi, loc=a["mean"], scale=a["std"])
        return float(dist.mean()), float(dist.std()), (a["a"], a["b"])
    if name in ("constant", "ones", "zeros"):
        val = {"ones": 1.0, "zeros": 0.0}.get(name, a.get("val"))
        return val, 0.0, (val, val)
    if name in ("eye", "dirac"):
        return float("nan"), float("nan"), (0.0, 1.0)
    if name in ("xavier_uniform", "xavier_normal"):
        std = a.get("gain", 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
        bound = math.sqrt(3) * std
        return 0.0, std, ((-bound, bound) if name.endswith("uniform") else None)
    if name in ("kaiming_uniform", "kaiming_normal"):
        from xinit.core.gains import calculate_gain

        gain = calculate_gain(a.get("nonlinearity", "leaky_relu"), a.get("a", 0))
        fan = fan_in if a.get("mode", "fan_in") == "fan_in" else fan_out
        std = gain / math.sqrt(fan)
        bound = math.sqrt(3) * std
        return 0.0, std, ((-bound, bound) if name.endswith("uniform") else None)
    if name == "orthogonal":
        rows = case.shape[0]
        cols = math.prod(case.shape[1:])
        return 0.0, a.get("gain", 1.0) / math.sqrt(max(rows, cols)), None
    if name == "sparse":
        rows = case.shape[0]
        zeros = math.ceil(a["sparsity"] * rows)
        return 0.0, a["std"] * math.sqrt(1 - zeros / rows), None
    if name == "truncated_normal":
        s = a["stddev"]
        lo, hi = a.get("lower", -2.0), a.get("upper", 2.0)
        return 0.0, s * _trunc_std(lo, hi), (lo * s, hi * s)
    if name in _JAX_ALIASES or name == "variance_scaling":
        scale, mode, dist = _JAX_ALIASES.get(name) or (a["scale"], a["mode"], a["distribution"])
        n = {
            "fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out),
        }[mode]
        std = math.sqrt(scale / n)
        if dist == "uniform":
            return 0.0, std, (-math.sqrt(3) * std, math.sqrt(3) * std)
        if dist == "normal":
            return 0.0, std, None
        limit = 2 * std / _trunc_std(-2.0, 2.0)
        return 0.0, std, (-limit, limit)
    raise KeyError(f"no formula for {name!r}")


# ------------------------------------------------------------------ sampling


def _torch_perm_to_flax(ndim: int) -> tuple[int, ...]:
    return (*range(2, ndim), 1, 0)


def _torch_shape_to_flax(shape) -> tuple[int, ...]:
    return tuple(shape[p] for p in _torch_perm_to_flax(len(shape)))


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def flax_module():
    """``xinit.flax`` if it can be imported, else ``None`` (it is optional)."""
    try:
        return importlib.import_module("xinit.flax")
    except ImportError:
        return None


def _jax_key(seed: int):
    import jax

    return jax.random.key(seed)


def reference_sample(case: Case, seed: int) -> np.ndarray:
    """The reference implementation's sample for ``case``: torch.nn.init or jax.nn.initializers."""
    if case.family == "jax":
        import jax

        init = getattr(jax.nn.initializers, case.name)(**case.args)
        return _np(init(_jax_key(seed), case.shape))
    import torch

    fn = getattr(torch.nn.init, case.name + "_")
    t = torch.empty(case.shape)
    if case.check == "exact":
        fn(t, **case.args)
    else:
        torch.manual_seed(seed)  # sparse_ draws its zero pattern from the global RNG
        fn(t, **case.args, generator=torch.Generator().manual_seed(seed))
    return _np(t)


def _core_spec(case: Case):
    from xinit.core import specs

    if case.name == "truncated_normal":
        return specs.TruncatedNormal(**case.args)
    if case.name in _JAX_ALIASES:
        return specs.VarianceScaling(*_JAX_ALIASES[case.name])
    return specs.VarianceScaling(**case.args)


def xinit_sample(case: Case, backend: str, seed: int) -> np.ndarray | None:
    """xinit's sample for ``case`` on ``backend``, in the case's layout; None if unavailable.

    Flax results of torch-family cases are moved back into torch layout, so every
    sample of a case compares element for element.
    """
    key = _jax_key(seed)
    if backend == "core":
        import xinit.core as core

        if case.family == "jax":
            return _np(core.sample(_core_spec(case), key, case.shape, layout=core.FLAX))
        return _np(getattr(core, case.name)(key, case.shape, **case.args))
    if backend == "torch":
        if case.family == "jax":
            return None
        import torch

        import xinit.torch as xt

        t = torch.empty(case.shape)
        fn = getattr(xt, case.name + "_")
        if case.check == "exact":
            fn(t, **case.args)
        else:
            fn(t, **case.args, key=key)
        return _np(t)
    if backend == "flax":
        mod = flax_module()
        if mod is not None and case.family == "torch":
            mod = mod.torch_init  # torch's semantics; the top level has jax.nn.initializers'
        factory = getattr(mod, case.name, None) if mod is not None else None
        if factory is None:
            return None
        if case.family == "jax":
            return _np(factory(**case.args)(key, case.shape))
        flax_shape = _torch_shape_to_flax(case.shape)
        out = _np(factory(**case.args)(key, flax_shape))
        inv = np.argsort(_torch_perm_to_flax(len(case.shape)))
        return out.transpose(inv)
    raise ValueError(f"unknown backend {backend!r}")


def identity_partner(case: Case, backend: str, seed: int) -> tuple[str, np.ndarray] | None:
    """What ``backend``'s sample must equal bit for bit, and its name (None: no check).

    The contract is torch <-> flax (and core, which both adapters run): for the
    ``torch.nn.init`` family and the same key, ``xinit.flax`` equals ``xinit.torch``
    moved into flax layout, and ``xinit.core`` equals ``xinit.torch``. The
    JAX-native family has no torch counterpart, so it has no identity check.
    """
    if case.family == "torch" and backend in ("core", "flax"):
        return "torch", xinit_sample(case, "torch", seed)
    return None


# ------------------------------------------------------------------ checks


@dataclass
class Row:
    """One line of the report."""

    case: Case
    backend: str
    reference: str
    status: str = "ok"  # "ok", "FAIL" or "skip"
    exp_mean: float = float("nan")
    exp_std: float = float("nan")
    mean: float = float("nan")
    std: float = float("nan")
    ref_mean: float = float("nan")
    ref_std: float = float("nan")
    ks_p: float | None = None
    bounds: str = "-"
    bits: str = "-"
    notes: list[str] = field(default_factory=list)
    sample: np.ndarray | None = field(default=None, repr=False)
    ref_sample: np.ndarray | None = field(default=None, repr=False)

    def fail(self, why: str) -> None:
        self.status = "FAIL"
        self.notes.append(why)


def check_row(case: Case, backend: str, seed: int, ref: np.ndarray) -> Row:
    """Sample ``case`` on ``backend`` and compare it with the reference sample ``ref``."""
    from scipy.stats import ks_2samp

    reference = "jax.nn.initializers" if case.family == "jax" else "torch.nn.init"
    row = Row(case, backend, reference)
    row.exp_mean, row.exp_std, bounds = expected(case)
    row.ref_mean, row.ref_std = float(ref.mean()), float(ref.std())
    try:
        x = xinit_sample(case, backend, seed)
    except Exception as err:  # a crash is a disagreement, reported on its row
        row.fail(f"{type(err).__name__}: {err}")
        return row
    if x is None:
        row.status = "skip"
        row.notes.append(
            f"xinit.flax{'.torch_init' if case.family == 'torch' else ''}.{case.name} is not "
            "available" if backend == "flax"
            else f"no {backend} counterpart"
        )
        return row
    row.sample = x
    if x.shape != ref.shape:
        row.fail(f"shape {x.shape} != reference shape {ref.shape}")
        return row
    xf = x.astype(np.float64).ravel()
    row.mean, row.std = float(xf.mean()), float(xf.std())
    n = xf.size

    if case.check == "exact":
        same = np.array_equal(x, ref)
        row.bounds = "exact" if same else "differs"
        if not same:
            row.fail("values differ from the reference")
    else:
        row.ks_p = float(ks_2samp(xf, ref.astype(np.float64).ravel()).pvalue)
        if not row.ks_p > KS_MIN_P:
            row.fail(f"KS p = {row.ks_p:.2g} <= {KS_MIN_P:g}")
        if abs(row.std - row.exp_std) > STD_RTOL * row.exp_std:
            row.fail(f"std {row.std:.5g} not within {STD_RTOL:.0%} of {row.exp_std:.5g}")
        if abs(row.mean - row.exp_mean) > MEAN_ZTOL * row.exp_std / math.sqrt(n):
            row.fail(f"mean {row.mean:.4g} too far from {row.exp_mean:.4g}")
        if bounds is not None:
            lo, hi = bounds
            ok = bool(xf.min() >= lo - 1e-7 * abs(lo) and xf.max() <= hi + 1e-7 * abs(hi))
            row.bounds = f"[{lo:.3g}, {hi:.3g}] " + ("ok" if ok else "VIOLATED")
            if not ok:
                row.fail(f"values outside [{lo:.6g}, {hi:.6g}]: "
                         f"min {xf.min():.6g}, max {xf.max():.6g}")
        if case.check == "orthogonal":
            m = x.reshape(x.shape[0], -1).astype(np.float64)
            gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
            err = float(np.abs(gram - case.args.get("gain", 1.0) ** 2 * np.eye(len(gram))).max())
            row.bounds = f"orthonormal (err {err:.1e})"
            if err > ORTHO_ATOL:
                row.fail(f"not orthonormal: max |Q'Q - I| = {err:.2g}")
        if case.check == "sparse":
            want = math.ceil(case.args["sparsity"] * case.shape[0])
            zeros = (x == 0).sum(axis=0)
            ok = bool((zeros == want).all())
            row.bounds = f"{want} zeros/col " + ("ok" if ok else "WRONG")
            if not ok:
                row.fail(f"zeros per column {sorted(set(zeros.tolist()))}, want {want}")

    partner = identity_partner(case, backend, seed)
    if partner is not None:
        name, other = partner
        if other is None:
            row.bits = f"n/a ({name} missing)"
        elif _same_bits(other, x):
            row.bits = f"== {name}"
        else:
            row.bits = f"!= {name}"
            row.fail(f"not bit-identical to the {name} adapter with the same key")
    return row


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                               np.ascontiguousarray(b).view(np.uint8)))


def select_cases(only: list[str] | None = None, quick: bool = False) -> list[Case]:
    """The cases to run: all, the quick subset, or those whose name is in ``only``."""
    names = set(only) if only else (set(QUICK) if quick else None)
    return [c for c in CASES if names is None or c.name in names]


def run(
    cases: list[Case],
    backends: list[str],
    *,
    seed: int = 0,
    progress: Callable[[str], Any] | None = None,
) -> list[Row]:
    """Run every (case, backend); ``progress(label)`` is called after each row."""
    rows = []
    for i, case in enumerate(cases):
        ref = reference_sample(case, 10_000 + seed + i)
        for backend in backends:
            if backend == "torch" and case.family == "jax":
                continue  # torch.nn.init has no JAX-native family
            row = check_row(case, backend, seed + i, ref)
            row.ref_sample = ref  # kept for the histogram
            rows.append(row)
            if progress is not None:
                progress(f"{case.name} [{backend}]")
    return rows


# ------------------------------------------------------------------ output


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}"


COLUMNS = ("initializer", "backend", "shape", "vs", "expected std", "xinit mean", "xinit std",
           "ref mean", "ref std", "KS p", "bounds", "bit identity", "result")


def row_cells(row: Row, short: bool = False) -> list[str]:
    """The row's cells under :data:`COLUMNS`; ``short`` leaves the notes out of ``result``."""
    result = row.status if short or not row.notes else f"{row.status}: {'; '.join(row.notes)}"
    return [
        _short_label(row.case) if short else row.case.label, row.backend,
        "x".join(map(str, row.case.shape)),
        row.reference.split(".")[0] if short else row.reference,
        fmt(row.exp_std), fmt(row.mean), fmt(row.std), fmt(row.ref_mean), fmt(row.ref_std),
        fmt(row.ks_p, 3), row.bounds, row.bits, result,
    ]


def write_markdown(rows: list[Row], path: Path, images: dict[Case, str], header: str) -> None:
    failed = sum(r.status == "FAIL" for r in rows)
    skipped = sum(r.status == "skip" for r in rows)
    lines = [
        "# xinit fidelity report",
        "",
        header,
        "",
        f"**{len(rows) - failed - skipped} ok, {failed} failed, {skipped} skipped** "
        f"(KS p > {KS_MIN_P:g}; std within {STD_RTOL:.0%} of the formula; mean within "
        f"{MEAN_ZTOL:g} standard errors).",
        "",
        "Each row compares one seeded sample of xinit on a backend (`core`: `xinit.core`, "
        "`torch`: `xinit.torch`, `flax`: `xinit.flax.torch_init` in flax layout for torch's "
        "names, `xinit.flax` for JAX's) with one sample of the "
        "reference on the same shape. *bounds*: uniform and truncated values inside their "
        "bounds, `exact` equality for the deterministic initializers, orthonormality, or the "
        "exact zeros per column of `sparse`. *bit identity*: `== torch` means the values equal "
        "`xinit.torch`'s for the same key bit for bit (flax kernels compared in torch layout); "
        "the JAX-native family has no torch counterpart. Regenerate with `xinit report --out DIR`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row_cells(row)]
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    if images:
        lines += ["", "## Histograms", ""]
        for case, name in images.items():
            lines += [f"### `{case.label}`", "", f"![{case.label}]({name})", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_histograms(rows: list[Row], out: Path) -> dict[Case, str]:
    """One PNG per case: the reference histogram and each backend's, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_case: dict[Case, list[Row]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    names: dict[Case, str] = {}
    used: dict[str, int] = {}
    for case, case_rows in by_case.items():
        ref = next((r.ref_sample for r in case_rows if r.ref_sample is not None), None)
        samples = [(r.backend, r.sample) for r in case_rows if r.sample is not None]
        used[case.name] = used.get(case.name, 0) + 1
        stem = case.name if used[case.name] == 1 else f"{case.name}_{used[case.name]}"
        fig, ax = plt.subplots(figsize=(6, 3.6))
        data = [s for _, s in samples] + ([ref] if ref is not None else [])
        lo = min(float(d.min()) for d in data)
        hi = max(float(d.max()) for d in data)
        bins = np.linspace(lo, hi, 81) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 3)
        if ref is not None:
            ax.hist(ref.ravel(), bins=bins, density=True, alpha=0.35, color="grey",
                    label=case_rows[0].reference)
        for backend, s in samples:
            ax.hist(s.ravel(), bins=bins, density=True, histtype="step", linewidth=1.3,
                    label=f"xinit ({backend})")
        ax.set_title(case.label, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=90)
        plt.close(fig)
        names[case] = f"{stem}.png"
    return names
