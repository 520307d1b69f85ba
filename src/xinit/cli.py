"""The ``xinit`` command: the fidelity report, the initializer list, recipes and benchmarks.

    xinit report [--out DIR] [--quick] [--backends core,torch,flax] [--only NAMES]
    xinit list
    xinit recipes
    xinit bench [ARGS...]
    xinit port SRC DST --torch-model MOD:FACTORY --flax-model MOD:FACTORY [--to flax|torch]
               [--check] [--input-map NHWC->NCHW]

Exit status: 0 when everything agrees, 1 when a report row disagrees (or a
subcommand's own run fails, or ``port --check`` finds the two models' outputs
apart), 2 for a usage error (unknown backend or initializer, an ``--out`` that
cannot be written, a factory that cannot be loaded, a checkpoint that does not
fit the models).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """A mistake in the command line: reported as one line on stderr, exit status 2."""


def _cells(*cells: str) -> list[str]:
    """Cells as literal text: ``[a, b]`` in a formula is not rich markup."""
    from rich.markup import escape

    return [escape(str(c)) for c in cells]


def _console(stderr: bool = False):
    from rich.console import Console

    # Outside a terminal (pipes, CI logs) rich would wrap the tables at 80 columns.
    width = None if sys.stdout.isatty() else 200
    return Console(stderr=stderr, width=width, highlight=False)


# ------------------------------------------------------------------ list


def cmd_list(args: argparse.Namespace) -> int:
    """Print every initializer with its formula and where it exists."""
    from rich.table import Table

    from . import _report

    flax = _report.flax_module()
    table = Table(title="xinit initializers (fans from the layout: torch (out, in, *k), "
                        "flax (*k, in, out))")
    for col in ("initializer", "formula", "xinit.torch", "xinit.flax", "reference"):
        table.add_column(col)
    for name in _report.TORCH_NAMES:
        table.add_row(*_cells(
            name, _report.FORMULAS[name], f"{name}_",
            _where(flax, name, "torch_init."), f"torch.nn.init.{name}_",
        ))
    for name in _report.JAX_NAMES:
        table.add_row(*_cells(
            name, _report.FORMULAS[name], "-", _where(flax, name),
            f"jax.nn.initializers.{name}",
        ))
    _console().print(table)
    return 0


def _where(module, name: str, namespace: str = "") -> str:
    """Where ``xinit.flax`` has ``name``: torch's semantics in ``torch_init.``, JAX's at the top."""
    if module is None:
        return "(xinit.flax not installed)"
    home = module.torch_init if namespace else module
    return namespace + name if hasattr(home, name) else "(not yet)"


# ------------------------------------------------------------------ recipes


def load_recipes() -> dict[str, object] | None:
    """Built-in recipes by name (``xinit.core.recipes.RECIPES``); None if that module is absent."""
    try:
        mod = importlib.import_module("xinit.core.recipes")
    except ModuleNotFoundError as err:
        if err.name in ("xinit.core.recipes", "xinit.core"):
            return None
        raise
    return {name: mod.get_recipe(name) for name in mod.RECIPES}


def _rule_cells(rule) -> tuple[str, str, str, str, str]:
    """(kind, role, name pattern, other conditions, initializer) of a rule; ``*``: anything."""
    import dataclasses

    def any_of(value) -> str:
        if value is None:
            return "*"
        if isinstance(value, (tuple, list, set, frozenset)):
            return ", ".join(map(str, value))
        return str(value)

    name = any_of(getattr(rule, "name", None))
    regex = getattr(rule, "regex", None)
    if regex is not None:
        name = f"re:{regex}" if name == "*" else f"{name} re:{regex}"
    shown = {"init", "kind", "role", "name", "regex"}
    other = []
    if dataclasses.is_dataclass(rule):
        for f in dataclasses.fields(rule):
            value = getattr(rule, f.name)
            if f.name not in shown and value is not None and value != f.default:
                other.append(f"{f.name}={any_of(value)}")
    return (
        any_of(getattr(rule, "kind", None)), any_of(getattr(rule, "role", None)), name,
        " ".join(other) or "-", repr(getattr(rule, "init", rule)),
    )


def cmd_recipes(args: argparse.Namespace) -> int:
    """Print the built-in recipes, rule by rule (the first matching rule wins)."""
    recipes = load_recipes()
    if recipes is None:
        print(
            "xinit recipes: this installation has no built-in recipes "
            "(xinit.core.recipes is not available)",
            file=sys.stderr,
        )
        return 1
    from rich.table import Table

    console = _console()
    for name, recipe in recipes.items():
        rules = list(getattr(recipe, "rules", ()))
        table = Table(title=f"{name} ({len(rules)} rules, first match wins)",
                      title_justify="left")
        for col in ("#", "kind", "role", "name", "also", "initializer"):
            table.add_column(col, overflow="fold")
        for i, rule in enumerate(rules):
            table.add_row(*_cells(i, *_rule_cells(rule)))
        console.print(table)
    return 0


# ------------------------------------------------------------------ report


def _parse_backends(text: str) -> list[str]:
    from ._report import BACKENDS

    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise UsageError(f"--backends is empty; choose from {', '.join(BACKENDS)}")
    for name in names:
        if name not in BACKENDS:
            raise UsageError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def _parse_only(text: str | None) -> list[str] | None:
    from ._report import FORMULAS

    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in FORMULAS:
            raise UsageError(
                f"unknown initializer {name!r} in --only; choose from {', '.join(FORMULAS)}"
            )
    return names


def _prepare_out(out: str | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}") from None
    return path


def _versions() -> str:
    parts = [f"xinit {_version()}", f"Python {platform.python_version()}"]
    for mod in ("jax", "torch", "flax", "scipy"):
        try:
            parts.append(f"{mod} {importlib.import_module(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} (not installed)")
    parts.append(f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    return ", ".join(parts)


def _version() -> str:
    from . import __version__

    return __version__


def cmd_report(args: argparse.Namespace) -> int:
    """Sample every initializer on every backend and compare with the reference."""
    backends = _parse_backends(args.backends)
    only = _parse_only(args.only)
    out = _prepare_out(args.out)
    try:
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise UsageError(
            f"xinit report needs {err.name} (pip install 'xinit[torch,cli]')"
        ) from None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from . import _report

    cases = _report.select_cases(only, args.quick)
    console, err_console = _console(), _console(stderr=True)
    if "flax" in backends and _report.flax_module() is None:
        err_console.print("note: xinit.flax is not available; flax rows are skipped")
    total = sum(1 for c in cases for b in backends if not (b == "torch" and c.family == "jax"))
    with Progress(
        TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task("sampling", total=total)

        def step(label: str) -> None:
            progress.update(task, advance=1, description=label)

        rows = _report.run(cases, backends, seed=args.seed, progress=step)

    table = Table(title="xinit fidelity report", show_lines=False)
    for col in _report.COLUMNS:
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "FAIL": "bold red", "skip": "yellow"}
    for row in rows:
        cells = _cells(*_report.row_cells(row, short=True))
        cells[-1] = f"[{style[row.status]}]{cells[-1]}[/]"
        table.add_row(*cells)
    console.print(table)
    for row in rows:
        if row.notes:
            label = f"{row.case.label} [{row.backend}]"
            text = _cells(f"{label}: {'; '.join(row.notes)}")[0]
            console.print(f"[{style[row.status]}]{row.status}[/] {text}")

    failed = [r for r in rows if r.status == "FAIL"]
    skipped = [r for r in rows if r.status == "skip"]
    summary = f"{len(rows) - len(failed) - len(skipped)} ok, {len(failed)} failed, " \
              f"{len(skipped)} skipped"
    if out is not None:
        images = _report.write_histograms(rows, out)
        header = f"Seed {args.seed}; {_versions()}."
        _report.write_markdown(rows, out / "report.md", images, header)
        summary += f"; wrote {out / 'report.md'} and {len(images)} histograms"
    console.print(summary)
    return 1 if failed else 0


# ------------------------------------------------------------------ bench


def find_benchmarks() -> Path | None:
    """``benchmarks/run.py`` of the source checkout (or of the current directory)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        script = root / "benchmarks" / "run.py"
        if script.is_file():
            return script
    return None


def print_ratio_table(results: Path) -> None:
    """Print the rows of a ``benchmarks/run.py`` ``performance.json`` as a ratio table."""
    import json

    from rich.table import Table

    data = json.loads(results.read_text(encoding="utf-8"))
    table = Table(title="xinit vs peers (ratio = peer time / xinit time; > 1: xinit is faster)")
    for col in ("section", "case", "shape", "dtype", "peer", "xinit ms", "peer ms", "ratio"):
        table.add_column(col, justify="right" if col.endswith(("ms", "ratio")) else "left")

    def ms(seconds) -> str:
        return "-" if seconds is None else f"{seconds * 1e3:.1f}"

    for row in data.get("rows", []):
        ratio = row.get("ratio")
        cell = "-" if ratio is None else f"{ratio:.2f}x"
        if ratio is not None:
            cell = f"[{'green' if ratio >= 1 else 'red'}]{cell}[/]"
        table.add_row(*_cells(
            row.get("section", ""), row.get("case", ""), row.get("shape", ""),
            row.get("dtype", ""), row.get("peer", ""), ms(row.get("xinit_s")),
            ms(row.get("peer_s")),
        ), cell)
    _console().print(table)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark suite's quick set and print its ratio table.

    The results go to a temporary directory unless ``--out`` is passed on to
    ``benchmarks/run.py``, so a quick run never overwrites ``docs/performance.md``.
    """
    script = find_benchmarks()
    if script is None:
        print(
            "xinit bench: benchmarks/run.py not found; run it from a source checkout of xinit",
            file=sys.stderr,
        )
        return 2
    extra = list(args.bench_args)
    with tempfile.TemporaryDirectory(prefix="xinit-bench-") as tmp:
        out = Path(tmp)
        if not any(a == "--out" or a.startswith("--out=") for a in extra):
            extra += ["--out", tmp]
        else:
            i = next(i for i, a in enumerate(extra) if a == "--out" or a.startswith("--out="))
            out = Path(extra[i + 1] if extra[i] == "--out" else extra[i].split("=", 1)[1])
        cmd = [sys.executable, str(script), "--quick", *extra]
        rc = subprocess.call(cmd, cwd=script.parent.parent)
        results = out / "performance.json"
        if rc == 0 and results.is_file():
            print_ratio_table(results)
    return rc


# ------------------------------------------------------------------ port

_PROGRESS_MIN_BYTES = 64 << 20  # smaller checkpoints convert in a blink: no bar


def load_factory(spec: str, option: str):
    """``MOD:FACTORY`` (a module path or a ``.py`` file, and a callable in it) -> the callable."""
    import importlib.util

    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"{option} must look like MODULE:FACTORY or path/to/file.py:FACTORY; "
                         f"got {spec!r}")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            path = Path(mod_name)
            if not path.is_file():
                raise UsageError(f"{option}: no such file {mod_name!r}")
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[path.stem] = module
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as err:
        raise UsageError(f"{option}: cannot import {mod_name!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{option}: {mod_name!r} has no callable {attr!r}")
    return factory


def _flax_model(factory, option: str):
    """A factory's result as (model, example args): a Traced, an nnx Module, or (linen, *args)."""
    from flax import linen, nnx

    from xinit.flax import Traced

    made = factory()
    if isinstance(made, Traced):
        return made, made.example_args
    if isinstance(made, nnx.Module):
        return made, ()
    if isinstance(made, tuple) and made and isinstance(made[0], (linen.Module, nnx.Module)):
        return made[0], tuple(made[1:])
    raise UsageError(f"{option}: the factory must return xinit.flax.trace(module, *inputs), an nnx "
                     f"Module, or a tuple (module, *example_inputs); got {type(made).__name__}")


def _one_line(report) -> str:
    parts = [f"{report.direction}: {len(report.missing)} missing, {len(report.unexpected)} "
             f"unexpected, {len(report.mismatched)} mismatched"]
    for title, items in (("missing", report.missing), ("unexpected", report.unexpected),
                         ("mismatched", report.mismatched)):
        if items:
            parts.append(f"{title}: " + ", ".join(str(p) for p in items))
    return "; ".join(parts)


def cmd_port(args: argparse.Namespace) -> int:
    """Convert a checkpoint file between PyTorch and Flax (see ``xinit.port.convert_file``)."""
    import numpy as np
    import torch
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    import xinit.port as xp

    torch_factory = load_factory(args.torch_model, "--torch-model")
    flax_factory = load_factory(args.flax_model, "--flax-model")
    src, dst = Path(args.src), Path(args.dst)
    if args.to == "flax" and not src.is_file():
        raise UsageError(f"no such checkpoint file {str(src)!r}")
    if args.to == "torch" and not src.exists():
        raise UsageError(f"no such checkpoint {str(src)!r}")
    with torch.device("meta"):  # the structure only: nothing allocated, no init run
        torch_model = torch_factory()
    if not isinstance(torch_model, torch.nn.Module):
        raise UsageError(f"--torch-model: the factory must return a torch.nn.Module; got "
                         f"{type(torch_model).__name__}")
    flax_model, example = _flax_model(flax_factory, "--flax-model")
    console = _console(stderr=True)
    progress = Progress(TextColumn(f"{src.name} -> {dst.name}"), BarColumn(), DownloadColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    task = None

    def tick(done: int, total: int) -> None:
        nonlocal task
        if total < _PROGRESS_MIN_BYTES:
            return
        if task is None:
            task = progress.add_task("port", total=total)
        progress.update(task, completed=done)

    try:
        with progress:
            report = xp.convert_file(src, dst, torch_model, flax_model, *example, to=args.to,
                                     progress=tick)
    except xp.PortError as err:
        raise UsageError(_one_line(err.report)) from None
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    print(f"wrote {dst} ({len(report.converted)} tensors, {args.to})")
    for w in report.warnings:
        print(f"warning: {w}")
    if not args.check:
        return 0
    if not example:
        raise UsageError("--check runs both models on the example inputs: return (module, "
                         "*example_inputs) from the Flax factory")
    real = torch_factory()
    torch_file, flax_file = (src, dst) if args.to == "flax" else (dst, src)
    real.load_state_dict(dict(xp.load_torch_state(torch_file)), strict=False)
    variables = xp.load_flax_variables(flax_file)
    if isinstance(flax_model, _nnx_module_type()):  # nnx runs with its own state: load it
        from flax import nnx

        state = nnx.state(flax_model)
        nnx.replace_by_pure_dict(state, variables)
        nnx.update(flax_model, state)
        variables = None
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(np.shape(x)).astype(np.asarray(x).dtype)
              if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x) for x in example]
    result = xp.compare(real, flax_model, variables, *inputs, input_map=args.input_map)
    print(result)
    return 0 if result.ok else 1


def _nnx_module_type():
    from flax import nnx

    return nnx.Module


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinit",
        description="xinit: one definition of every initializer, native in PyTorch and Flax.",
    )
    parser.add_argument("--version", action="version", version=f"xinit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rep = sub.add_parser(
        "report", help="the fidelity report: xinit vs torch.nn.init / jax.nn.initializers",
        description="Sample every initializer on every backend and compare it with "
                    "torch.nn.init (and jax.nn.initializers for the JAX-native family). "
                    "Exit status 1 if any row disagrees.",
    )
    rep.add_argument("--out", metavar="DIR", help="also write DIR/report.md and one PNG per "
                                                  "initializer")
    rep.add_argument("--quick", action="store_true", help="a fast subset of the initializers")
    rep.add_argument("--backends", default="core,torch,flax", metavar="LIST",
                     help="comma-separated, from core, torch, flax (default: all)")
    rep.add_argument("--only", metavar="NAMES",
                     help="comma-separated initializer names (overrides --quick)")
    rep.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="the initializers with their formulas")
    lst.set_defaults(func=cmd_list)

    rec = sub.add_parser("recipes", help="the built-in recipes with their rules")
    rec.set_defaults(func=cmd_recipes)

    ben = sub.add_parser("bench", help="the benchmark suite's quick set (ratios vs torch)")
    ben.epilog = "Other arguments (e.g. --sections single --repeats 1) go to benchmarks/run.py."
    ben.set_defaults(func=cmd_bench)

    prt = sub.add_parser(
        "port", help="convert a checkpoint between PyTorch and Flax",
        description="Convert SRC (a torch .pt/.bin/.safetensors file, or with --to torch Flax "
                    "variables: .msgpack, .safetensors or an Orbax directory) into DST, laid out "
                    "for the other framework, tensor by tensor. The two architectures come from "
                    "factories: MODULE:FACTORY or path/to/file.py:FACTORY. The torch factory "
                    "returns an nn.Module (built on the meta device: nothing is allocated); the "
                    "Flax factory returns xinit.flax.trace(module, *inputs), an nnx Module, or "
                    "(module, *example_inputs) (needed for --check).",
    )
    prt.add_argument("src", help="the checkpoint to convert")
    prt.add_argument("dst", help="the output (.msgpack/.safetensors/Orbax dir; .pt/.bin/.safetensors)")
    prt.add_argument("--torch-model", required=True, metavar="MOD:FACTORY")
    prt.add_argument("--flax-model", required=True, metavar="MOD:FACTORY")
    prt.add_argument("--to", choices=("flax", "torch"), default="flax",
                     help="the framework of DST (default: flax)")
    prt.add_argument("--check", action="store_true",
                     help="then run both models on the example inputs and compare (exit 1 if apart)")
    prt.add_argument("--input-map", metavar="A->B", default=None,
                     help="with --check: how an input becomes torch's, e.g. NHWC->NCHW")
    prt.set_defaults(func=cmd_port)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xinit`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_args = extra
    try:
        return args.func(args)
    except UsageError as err:
        print(f"xinit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
