"""xinit.port against transformers' own converter, on Hugging Face GPT-2 small (124M).

transformers' ``convert_pytorch_state_dict_to_flax`` exists up to the 4.x line only
(5.x dropped the Flax models), so this runs in a separate, throwaway environment,
never in xinit's own (see benchmarks/notes.md for how it was built)::

    python3 -m venv /tmp/tf4
    /tmp/tf4/bin/pip install torch==2.13.0 jax==0.10.2 jaxlib==0.10.2 flax==0.12.8
    /tmp/tf4/bin/pip install --no-deps transformers==4.46.3
    /tmp/tf4/bin/pip install "huggingface-hub<1.0" "tokenizers<0.21" safetensors regex \\
        requests pyyaml packaging tqdm filelock
    PYTHONPATH=src /tmp/tf4/bin/python benchmarks/port_vs_transformers.py

Both convert the same torch ``GPT2LMHeadModel``'s state dict into the
variables of ``FlaxGPT2LMHeadModel`` in memory, interleaved, medians of warm
repeats. transformers' converter reads the Flax model's parameter shapes
(``flax_model.params``, built beforehand); xinit reads the linen module,
traced once before the clock (its time is printed too). The two declare
Hugging Face's layers with ``xinit.register_layer`` (``Conv1D`` stores
``(in, out)``, ``FlaxConv1D`` ``(out, in)``). Values are checked equal.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
import torch


def main(repeats: int = 7) -> dict:
    from transformers import FlaxGPT2LMHeadModel, GPT2Config, GPT2LMHeadModel
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    import xinit
    import xinit.port as xp
    from xinit.flax import trace

    xinit.register_layer("transformers.pytorch_utils.Conv1D", kind="linear",
                         layout=xinit.Layout(in_axis=0, out_axis=1))
    xinit.register_layer("transformers.models.gpt2.modeling_flax_gpt2.FlaxConv1D", kind="linear",
                         layout=xinit.TORCH)
    config = GPT2Config()
    torch.manual_seed(0)
    pt = GPT2LMHeadModel(config).eval()
    fx = FlaxGPT2LMHeadModel(config, _do_init=True)  # transformers' converter reads its params
    ids = np.zeros((1, 8), np.int32)
    t0 = time.perf_counter()
    traced = trace(fx.module, ids, np.ones((1, 8), np.int32), np.arange(8)[None], deterministic=True)
    trace_s = time.perf_counter() - t0

    def ours():
        return jax.block_until_ready(xp.torch_to_flax(pt, traced))

    def theirs():
        return jax.block_until_ready(convert_pytorch_state_dict_to_flax(dict(pt.state_dict()), fx))

    a, b = ours()["params"], theirs()
    flat_a = {k: np.asarray(v) for k, v in _flat(a).items()}
    flat_b = {k: np.asarray(v) for k, v in _flat(b).items()}
    shared = flat_a.keys() & flat_b.keys()
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in shared), "values differ"
    times = {"xinit": [], "transformers": []}
    for _ in range(2):
        ours(), theirs()
    for _ in range(repeats):
        for name, fn in (("xinit", ours), ("transformers", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"xinit_s": med["xinit"], "transformers_s": med["transformers"],
            "ratio": med["transformers"] / med["xinit"], "trace_s": trace_s,
            "tensors_equal": len(shared), "only_transformers": sorted(flat_b.keys() - flat_a.keys()),
            "only_xinit": sorted(flat_a.keys() - flat_b.keys()), "repeats": repeats}


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flat(v, (*prefix, k)))
        else:
            out["/".join((*prefix, k))] = v
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
