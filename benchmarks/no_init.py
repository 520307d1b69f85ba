"""Building a Hugging Face transformers model under ``xinit.torch.no_init()`` vs an eager build.

transformers (5.x) draws every weight while it builds a model (``post_init`` runs the
model's ``_init_weights`` through its own references to ``torch.nn.init``); under
``xt.no_init()`` nothing is drawn, the tied head is still tied, and the weights are
then drawn by ``xt.initialize``. Each build is timed whole (module construction
included), the two interleaved repeat by repeat in one process.

    .venv/bin/python benchmarks/no_init.py           # GPT-2 small
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "gpt2": {},  # GPT-2 small: transformers' defaults
    "gpt2_tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 500, "n_positions": 64},
}


def bench_build(name: str = "gpt2", repeats: int = 5) -> dict:
    """Median seconds of an eager build and of a build under ``no_init``, and what no_init kept."""
    import transformers as tf
    from run import interleaved

    import xinit.torch as xt

    warnings.filterwarnings("ignore", module="transformers")
    cfg = tf.GPT2Config(**CONFIGS[name])
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with xt.no_init():
        model = tf.GPT2LMHeadModel(cfg)
    checks = {
        "rng_untouched": bool(torch.equal(torch.get_rng_state(), state)),
        "head_tied": model.lm_head.weight is model.transformer.wte.weight,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    del model

    def under_no_init():
        with xt.no_init():
            tf.GPT2LMHeadModel(cfg)

    times = interleaved({"eager": lambda: tf.GPT2LMHeadModel(cfg), "no_init": under_no_init},
                        repeats, warmup=1)
    return {"case": f"{name} (transformers) built under no_init", "xinit_s": times["no_init"],
            "peer": "eager build", "peer_s": times["eager"], **checks}


if __name__ == "__main__":
    r = bench_build(sys.argv[1] if len(sys.argv) > 1 else "gpt2")
    print(f"{r['case']}: {r['xinit_s'] * 1e3:.0f} ms vs {r['peer']} {r['peer_s'] * 1e3:.0f} ms "
          f"({r['peer_s'] / r['xinit_s']:.1f}x); RNG untouched: {r['rng_untouched']}, "
          f"head tied: {r['head_tied']}")
