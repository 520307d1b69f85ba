"""One cold measurement in a fresh process; prints a JSON line (used by run.py).

    python benchmarks/cold.py --model gpt2 --who xinit --cache DIR
    python benchmarks/cold.py --model gpt2 --who torch

``torch``: build the model on the CPU (its layers' reset_parameters run in their
constructors). ``xinit``: from ``import xinit.torch`` (JAX import and every
compilation included) until the model is built and initialized with the
``torch_default`` recipe, by one of two paths: ``--path no_init`` (default):
build it on the CPU inside ``xinit.torch.model.no_init()`` (torch's init
skipped), then ``initialize``; ``--path meta``: build it on ``meta``, then
``materialize`` (without xinit.torch.model: ``to_empty`` + one ``xinit.torch``
call per tensor). torch itself and the model classes are imported before the
clock starts, for both.

    python benchmarks/cold.py --framework flax --model gpt2 --who xinit
    python benchmarks/cold.py --framework flax --model gpt2 --who flax

``--framework flax`` times the Flax linen models of ``flax_models.py`` (torch is
not imported): ``flax``: ``jax.jit(model.init)(key, x)`` (tracing and XLA
compilation included), the way flax models are initialized; ``xinit``: from
``import xinit.flax`` until ``xinit.flax.initialize(jax.eval_shape(model.init,
key, x), "torch_default", key=...)`` returns. Both block until the arrays are
ready; flax, jax and the model classes are imported before the clock.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

from rss import peak_rss_bytes, rss_bytes


def _call(fn, model, recipe):
    params = inspect.signature(fn).parameters
    kwargs = {"key": 0} if "key" in params else {}
    if "recipe" in params:
        return fn(model, recipe=recipe, **kwargs)
    return fn(model, recipe, **kwargs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--framework", choices=("torch", "flax"), default="torch")
    ap.add_argument("--who", choices=("xinit", "torch", "flax"), required=True)
    ap.add_argument("--cache", default="", help="persistent compilation cache dir ('' = none)")
    ap.add_argument("--path", choices=("no_init", "meta"), default="no_init")
    args = ap.parse_args(argv)
    if args.who not in ("xinit", args.framework):
        ap.error(f"--who {args.who} does not go with --framework {args.framework}")
    if args.framework == "flax":
        return _flax(args)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import models
    import torch  # noqa: F401 - imported before the clock for both sides

    build = models.MODELS[args.model]
    rss_before = rss_bytes()
    out = {"model": args.model, "who": args.who, "cache": bool(args.cache)}
    if args.who == "torch":
        t0 = time.perf_counter()
        model = build(device="cpu")
        out["seconds"] = time.perf_counter() - t0
        out["path"] = "construct on cpu"
    else:
        t0 = time.perf_counter()
        import xinit.torch as xt

        if args.cache:
            from xinit.core.cache import enable_compilation_cache

            enable_compilation_cache(args.cache)
        try:
            from xinit.torch.model import initialize, materialize, no_init
        except ImportError:
            initialize = materialize = no_init = None
        if args.path == "no_init" and initialize is not None:
            with no_init():
                model = build(device="cpu")
            _call(initialize, model, "torch_default")
            out["path"] = "no_init() build + initialize"
        elif materialize is not None:
            model = build(device="meta")
            _call(materialize, model, "torch_default")
            out["path"] = "meta + materialize"
        else:
            model = build(device="meta")
            model.to_empty(device="cpu")
            if hasattr(model, "lm_head") and hasattr(model, "wte"):
                model.lm_head.weight = model.wte.weight  # to_empty breaks the tie
            models.torch_default_by_hand(model, xt)
            out["path"] = "meta + to_empty + xinit.torch per tensor"
        out["seconds"] = time.perf_counter() - t0
        import xinit.core

        out["compiles"] = xinit.core.debug.compile_count()
    out["rss_before"] = rss_before
    out["peak_rss"] = peak_rss_bytes()
    out["state_bytes"] = models.state_bytes(model)
    print(json.dumps(out))
    return out


def _flax(args) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import flax_models  # imports flax and jax: before the clock for both
    import jax

    fm = flax_models.MODELS[args.model]()
    if args.cache and args.who == "flax":  # the same JAX cache settings, before the clock
        from xinit.core.cache import enable_compilation_cache

        enable_compilation_cache(args.cache)
    rss_before = rss_bytes()
    out = {"model": args.model, "who": args.who, "framework": "flax", "cache": bool(args.cache)}
    t0 = time.perf_counter()
    if args.who == "flax":
        variables = jax.block_until_ready(jax.jit(fm.module.init)(jax.random.key(0), *fm.inputs))
        out["path"] = "jax.jit(model.init)"
    else:
        import xinit.flax as xf

        if args.cache:
            from xinit.core.cache import enable_compilation_cache

            enable_compilation_cache(args.cache)
        abstract = jax.eval_shape(fm.module.init, jax.random.key(0), *fm.inputs)
        variables = jax.block_until_ready(
            xf.initialize(abstract, "torch_default", key=0, rename=fm.rename))
        out["path"] = "eval_shape + xinit.flax.initialize"
        import xinit.core

        out["compiles"] = xinit.core.debug.compile_count()
    out["seconds"] = time.perf_counter() - t0
    out["rss_before"] = rss_before
    out["peak_rss"] = peak_rss_bytes()
    out["state_bytes"] = flax_models.state_bytes(variables)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
