"""Hugging Face transformers models, as their users build them: the "hf" recipe against each
model's own ``_init_weights``, generic recipes on transformers layers, computed buffers through
``meta`` builds, ``no_init`` and half-loaded checkpoints.

transformers is a dev dependency (5.x, pure Python; it never replaces torch): these tests run in CI.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xinit.torch as xt
from init_compare import assert_same_init, tensors
from xinit.core.errors import CheckpointError
from xinit.core.recipes import UnmatchedError

tf = pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install 'xinit[dev]')")

@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' config notices
        yield


def gpt2():
    return tf.GPT2LMHeadModel, tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500,
                                             n_positions=64, bos_token_id=0, eos_token_id=0)


def llama():
    return tf.LlamaForCausalLM, tf.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=500, pad_token_id=3, max_position_embeddings=64)


def bert():
    return tf.BertForMaskedLM, tf.BertConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        vocab_size=500, max_position_embeddings=64)


def vit():
    return tf.ViTForImageClassification, tf.ViTConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        image_size=32, patch_size=4, num_labels=10)


def t5():
    return tf.T5ForConditionalGeneration, tf.T5Config(
        num_layers=2, d_model=64, d_kv=16, d_ff=128, num_heads=4, vocab_size=500,
        initializer_factor=0.5)


def t5_untied():
    cls, cfg = t5()
    cfg.tie_word_embeddings = False
    cfg.feed_forward_proj = "gated-gelu"
    return cls, cfg


MODELS = {"gpt2": gpt2, "llama": llama, "bert": bert, "vit": vit, "t5": t5, "t5_untied": t5_untied}


def build(factory, seed=0):
    cls, cfg = factory()
    torch.manual_seed(seed)
    return cls(cfg)


# ---------------------------------------------------------------- the "hf" recipe


@pytest.mark.parametrize("model", MODELS)
def test_hf_recipe_draws_what_transformers_draws(model):
    theirs = build(MODELS[model], seed=1)
    ours = build(MODELS[model], seed=2)
    plan = xt.plan(ours, "hf")
    assert not [e.param.name for e in plan.entries if e.rule is None and not e.param.buffer]
    xt.initialize(ours, "hf", key=0)
    assert_same_init(ours, theirs)


def test_hf_recipe_numbers_come_from_the_config():
    cls, cfg = gpt2()
    cfg.initializer_range = 0.05
    m = cls(cfg)
    specs = {e.param.name: e.resolved.spec for e in xt.plan(m, "hf").entries if e.resolved}
    assert specs["transformer.h.0.attn.c_attn.weight"].std == 0.05
    assert specs["transformer.h.1.mlp.c_proj.weight"].std == pytest.approx(0.05 / np.sqrt(2 * 2))
    assert specs["transformer.h.1.mlp.c_proj.bias"].name == "zeros"
    assert "lm_head.weight" not in specs  # tied: drawn once, as transformer.wte.weight
    cls, cfg = t5()
    m = cls(cfg)
    specs = {e.param.name: e.resolved.spec for e in xt.plan(m, "hf").entries if e.resolved}
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert specs[q].std == pytest.approx(0.5 * (64 * 16) ** -0.5)
    assert specs["decoder.block.1.layer.2.DenseReluDense.wo.weight"].std == pytest.approx(0.5 * 128**-0.5)
    assert specs["encoder.final_layer_norm.weight"].val == 0.5


def test_hf_recipe_refuses_a_model_whose_init_it_does_not_know():
    m = tf.RobertaModel(tf.RobertaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, vocab_size=100))
    before = {n: t.clone() for n, t in m.state_dict().items()}
    with pytest.raises(ValueError, match="RobertaPreTrainedModel._init_weights"):
        xt.initialize(m, "hf", key=0)
    assert all(torch.equal(before[n], t) for n, t in m.state_dict().items())
    with pytest.raises(ValueError, match="Hugging Face transformers models"):
        xt.initialize(torch.nn.Linear(2, 2), "hf", key=0)


# ------------------------------------------------------ generic recipes, HF layers


def test_generic_recipes_cover_transformers_layers():
    """Regression: GPT-2's Conv1D was kind "other" (72 unmatched), LlamaRMSNorm unmatched."""
    m = build(gpt2)
    assert not xt.plan(m, "gpt2").unmatched
    (w,) = [p for p in xt.describe(m) if p.name == "transformer.h.0.attn.c_attn.weight"]
    assert w.kind == "linear" and w.shape == (192, 64)  # stored (in, out) = (64, 192)
    assert "transformers.pytorch_utils.Conv1D" in w.lineage
    xt.initialize(m, "gpt2", key=0)
    std = m.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / np.sqrt(24), rel=0.1)  # gpt2()'s n_layer=12
    llama_model = build(llama)
    norms = {p.name: p.kind for p in xt.describe(llama_model) if "norm" in p.name}
    assert set(norms.values()) == {"norm"}
    assert not [n for n in xt.plan(llama_model, "transformer").unmatched
                if not n.endswith("inv_freq")]


# -------------------------------------------------------------- computed buffers


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_meta_build_recomputes_computed_buffers_through_the_model(model):
    """Regression: zero-filled rotary inv_freq (Llama) and position_ids (BERT) gave quietly
    wrong models. A model built on meta is the eager model, buffers and outputs included."""
    eager = build(MODELS[model])
    xt.initialize(eager, "hf", key=7)
    cls, cfg = MODELS[model]()
    with torch.device("meta"):
        meta = cls(cfg)
    buffers = [n for n, _ in meta.named_buffers()]
    assert buffers
    p = xt.plan(meta, "hf")
    assert {e.param.name for e in p.entries if e.param.buffer and e.rule is None} == set(buffers)
    xt.materialize(meta, "cpu", "hf", key=7)
    for (n, a), (n2, b) in zip(tensors(eager).items(), tensors(meta).items(), strict=True):
        assert n == n2 and torch.equal(a, b), n
    ids = torch.arange(12).reshape(1, 12) % 400
    eager.eval()
    meta.eval()
    with torch.no_grad():
        assert torch.equal(eager(ids).logits, meta(ids).logits)


def test_meta_params_keeps_buffers_real():
    cls, cfg = llama()
    with xt.meta_params():
        m = cls(cfg)
    assert all(p.is_meta for p in m.parameters())
    assert not m.model.rotary_emb.inv_freq.is_meta
    inv_freq = m.model.rotary_emb.inv_freq.clone()
    xt.materialize(m, "cpu", "hf", key=7)
    assert torch.equal(m.model.rotary_emb.inv_freq, inv_freq)
    eager = build(llama)
    xt.initialize(eager, "hf", key=7)
    assert all(torch.equal(a, b) for a, b in zip(tensors(eager).values(), tensors(m).values(), strict=True))


# ------------------------------------------------------------------------ no_init


def test_no_init_stops_transformers_own_init_and_keeps_ties():
    """Regression: transformers keeps its own references to torch's init functions, so the
    RNG still advanced (and GPT-2 took as long as an eager build)."""
    cls, cfg = gpt2()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with xt.no_init():
        m = cls(cfg)
        b = tf.BertForMaskedLM(bert()[1])
    assert torch.equal(torch.get_rng_state(), state)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert b.cls.predictions.decoder.weight is b.bert.embeddings.word_embeddings.weight
    assert torch.equal(b.bert.embeddings.position_ids, torch.arange(64).reshape(1, 64))  # still computed
    import transformers.initialization as hf_init

    assert hf_init.normal_.__name__ == "normal_" and torch.nn.init.normal_.__name__ == "normal_"
    xt.initialize(m, "hf", key=3)
    eager = build(gpt2)
    xt.initialize(eager, "hf", key=3)
    assert all(torch.equal(a, b) for a, b in zip(tensors(eager).values(), tensors(m).values(), strict=True))


# ------------------------------------------------------------ half-loaded checkpoints


def _classifier(num_labels, seed=0):
    cfg = tf.BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                        num_attention_heads=2, vocab_size=100, max_position_embeddings=32,
                        num_labels=num_labels)
    torch.manual_seed(seed)
    return tf.BertForSequenceClassification(cfg), cfg


@pytest.mark.parametrize("source", ["mapping", ".safetensors", ".bin"])
def test_fine_tuning_with_a_new_head_loads_the_body_and_draws_the_head(source, tmp_path, monkeypatch):
    trained, _ = _classifier(2, seed=5)
    body = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.")}
    if source == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in body.items()}, tmp_path / "body.safetensors")
        sd = tmp_path / "body.safetensors"
    elif source == ".bin":
        torch.save(body, tmp_path / "body.bin")
        sd = str(tmp_path / "body.bin")
    else:
        sd = body
    _, cfg = _classifier(5)
    with torch.device("meta"):
        model = tf.BertForSequenceClassification(cfg)
    p = xt.plan(model, "hf", state_dict=sd)
    assert set(p.drawn) == {"classifier.weight", "classifier.bias"}
    assert set(p.loaded) == set(body)
    drawn = []
    real_write = xt.model._write_all

    def counting(entries, *args, **kwargs):
        drawn.extend(e.param.name for e in entries)
        return real_write(entries, *args, **kwargs)

    monkeypatch.setattr(xt.model, "_write_all", counting)
    xt.materialize(model, "cpu", "hf", key=11, state_dict=sd, save_manifest=tmp_path / "m.json")
    assert sorted(drawn) == ["classifier.bias", "classifier.weight"]  # nothing drawn then overwritten
    for k, v in body.items():
        assert torch.equal(model.state_dict()[k], v), k
    fresh, _ = _classifier(5)
    xt.initialize(fresh, "hf", key=11)
    assert torch.equal(model.classifier.weight, fresh.classifier.weight)  # same key, same values
    assert not model.bert.embeddings.position_ids.is_meta  # computed, not in the checkpoint
    from xinit.core.manifest import Manifest

    record = Manifest.load(tmp_path / "m.json")
    assert set(record.loaded) == set(body) and set(record.drawn) == set(p.drawn)
    assert set(record.computed) == {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}


def test_a_checkpoint_that_does_not_fit_is_reported_whole_before_anything_is_written():
    trained, _ = _classifier(2, seed=5)
    sd = dict(trained.state_dict())
    sd["bert.pooler.dense.weight"] = sd["bert.pooler.dense.weight"].double()[:, :16]
    sd["extra.weight"] = torch.zeros(3)
    sd["bert.embeddings.LayerNorm.weight"] = sd["bert.embeddings.LayerNorm.weight"].to(torch.int64)
    model, _ = _classifier(5)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    with pytest.raises(CheckpointError) as err:
        xt.initialize(model, "hf", state_dict=sd)
    text = str(err.value)
    assert "extra.weight" in text and "bert.pooler.dense.weight: shape (32, 16)" in text
    assert "classifier.weight: shape (2, 32) in the checkpoint, (5, 32) in the model" in text
    assert "LayerNorm.weight: dtype torch.int64" in text
    assert isinstance(err.value, RuntimeError)  # what torch's load_state_dict raises
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_buffer_the_models_own_code_does_not_compute_is_an_error_and_nothing_stays_real():
    cls, cfg = gpt2()
    with torch.device("meta"):
        m = cls(cfg)
    m.transformer.register_buffer("causal", torch.ones(4, 4, device="meta"), persistent=False)
    with pytest.raises(UnmatchedError, match=r"did not compute transformer\.causal .*meta_params\(\)"):
        xt.materialize(m, "cpu", "gpt2", key=0)
    assert all(t.is_meta for t in tensors(m).values())  # put back as it was
    assert m.lm_head.weight is m.transformer.wte.weight
    with pytest.warns(UserWarning, match="transformer.causal"):
        xt.materialize(m, "cpu", "gpt2", key=0, unmatched="zeros")
