"""The ``"hf"`` recipe: what a Hugging Face transformers model's own ``_init_weights`` draws.

transformers (5.x) initializes a model in ``post_init``: every module, children
first, goes through the model's ``_init_weights``, which starts with
``PreTrainedModel._init_weights`` and may then override it for that model's own
classes; tied weights are tied afterwards. :func:`hf` writes the same thing as
rules, with the numbers read from the model's config:

- ``PreTrainedModel._init_weights`` (every model): ``Linear``, ``Conv1d/2d/3d``,
  ``ConvTranspose1d/2d`` weights N(0, std) and biases 0; ``Embedding`` N(0, std)
  with the padding row 0; ``LSTM`` weights ``xavier_uniform`` and biases 0;
  ``MultiheadAttention`` its own reset (its ``out_proj`` N(0, std)); norms found
  *by class name* as transformers does (a class name containing ``LayerNorm``
  or ``RMSNorm``, such as ``LlamaRMSNorm`` or ``T5LayerNorm``; GroupNorm,
  BatchNorm) weight 1, bias 0, running statistics 0/1. ``std`` is
  ``initializer_range`` (0.02 when it is 0 or missing), else ``init_std``, else
  ``initializer_factor``. Llama, Mistral, Qwen2 and most decoder models use this
  alone.
- GPT-2: ``Conv1D`` (stored ``(in, out)``) N(0, initializer_range), biases 0; the
  residual projections ``c_proj`` of ``GPT2Attention``/``GPT2MLP``
  N(0, initializer_range / sqrt(2 n_layer)).
- BERT: the LM head's output bias 0.
- ViT: ``position_embeddings`` and ``cls_token`` ``trunc_normal_(std=
  initializer_range)`` (torch's absolute bounds +-2), ``mask_token`` 0.
- T5: with ``f = initializer_factor``: ``T5LayerNorm`` weight ``f``; the shared
  embedding (and an untied ``lm_head``) N(0, f); attention ``q`` N(0,
  f (d_model d_kv)^-1/2), ``k``/``v`` N(0, f d_model^-1/2), ``o`` N(0, f (num_heads
  d_kv)^-1/2), ``relative_attention_bias`` N(0, f d_model^-1/2); feed-forward
  ``wi``/``wi_0``/``wi_1`` N(0, f d_model^-1/2) and ``wo`` N(0, f d_ff^-1/2);
  the classification and question-answering heads as T5 does.

Tensors transformers does not touch keep what their layer's constructor gave
them (the recipe ends with :func:`~xinit.core.recipes.torch_default`). Computed
buffers (rotary ``inv_freq``, BERT's ``position_ids``) are never written by a
rule: ``xinit.torch.materialize`` recomputes them through the model's own
``_init_weights`` when they are on ``meta``.

Nothing here imports transformers: classes are named (rules match by class name
and inheritance), and the config is read by attribute or key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .recipes import PaddingZeroed, Recipe, Rule, at_any_depth, torch_default
from .specs import Constant, Normal, Ones, TruncNormal, XavierUniform, Zeros

__all__ = ["hf", "HF_FAMILIES", "HF_INIT_WEIGHTS", "NORM_CLASS_NAMES"]

#: How transformers recognizes norms (``PreTrainedModel._init_weights``): by
#: isinstance for these torch classes, by class name for the rest.
NORM_CLASS_NAMES = ("GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "*LayerNorm*",
                    "*RMSNorm*")

_MATRICES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d")
_CONV1D = "transformers.pytorch_utils.Conv1D"

#: ``model_type`` -> the family of ``_init_weights`` overrides :func:`hf` writes.
HF_FAMILIES = {"gpt2": "gpt2", "bert": "bert", "vit": "vit", "t5": "t5", "llama": "base"}

#: The classes whose ``_init_weights`` the families reproduce (by bare name): a
#: model whose ``_init_weights`` comes from another class is not covered.
HF_INIT_WEIGHTS = {
    "PreTrainedModel": "base",
    "GPT2PreTrainedModel": "gpt2",
    "BertPreTrainedModel": "bert",
    "ViTPreTrainedModel": "vit",
    "T5PreTrainedModel": "t5",
}


def _get(config, key: str, default: Any = None) -> Any:
    """``config.key`` or ``config[key]`` (a transformers config or its ``to_dict()``)."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _number(config, key: str) -> float:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(
            f"hf: the config's {key!r} must be a positive number for model_type "
            f"{_get(config, 'model_type')!r}; got {key}={value!r}"
        )
    return value


def _has(config, key: str) -> bool:
    return key in config if isinstance(config, Mapping) else hasattr(config, key)


def _base_std(config) -> float:
    """``PreTrainedModel._init_weights``'s std (the first of these the config has)."""
    if _has(config, "initializer_range"):
        return _get(config, "initializer_range") or 0.02
    for key in ("init_std", "initializer_factor"):
        if _has(config, key):
            return _get(config, key)
    return 0.02


def _gpt2(config) -> list[Rule]:
    r = _number(config, "initializer_range")
    n_layer = _number(config, "n_layer")
    return [
        Rule(Normal(0.0, r / math.sqrt(2 * n_layer)), kind=_CONV1D, role="weight",
             name=at_any_depth("c_proj.weight"), within=("GPT2Attention", "GPT2MLP")),
        Rule(Normal(0.0, r), kind=_CONV1D, role="weight"),
        Rule(Zeros(), kind=_CONV1D, role="bias"),
    ]


def _bert(config) -> list[Rule]:
    return [Rule(Zeros(), kind="BertLMPredictionHead", role="bias")]


def _vit(config) -> list[Rule]:
    r = _number(config, "initializer_range")
    return [
        Rule(TruncNormal(0.0, r, -2.0, 2.0), kind="ViTEmbeddings",
             role=("position_embeddings", "cls_token")),
        Rule(Zeros(), kind="ViTEmbeddings", role="mask_token"),
    ]


def _t5(config) -> list[Rule]:
    f = _get(config, "initializer_factor", 1.0)
    d_model, d_kv = _number(config, "d_model"), _number(config, "d_kv")
    d_ff, heads = _number(config, "d_ff"), _number(config, "num_heads")
    model_level = ("T5Model", "T5ForConditionalGeneration", "T5EncoderModel", "T5ForQuestionAnswering")
    rules = [
        Rule(Constant(f * 1.0), kind="T5LayerNorm", role="weight"),
        Rule(Normal(0.0, f * (d_model * d_kv) ** -0.5), name=at_any_depth("q.weight"), within="T5Attention"),
        Rule(Normal(0.0, f * d_model**-0.5), name=at_any_depth("k.weight", "v.weight"), within="T5Attention"),
        Rule(Normal(0.0, f * (heads * d_kv) ** -0.5), name=at_any_depth("o.weight"), within="T5Attention"),
        Rule(Normal(0.0, f * d_model**-0.5), name=at_any_depth("relative_attention_bias.weight"),
             within="T5Attention"),
        Rule(Normal(0.0, f * d_model**-0.5), name=at_any_depth("wi.weight", "wi_0.weight", "wi_1.weight"),
             within=("T5DenseActDense", "T5DenseGatedActDense")),
        Rule(Normal(0.0, f * d_ff**-0.5), name=at_any_depth("wo.weight"),
             within=("T5DenseActDense", "T5DenseGatedActDense")),
        Rule(Normal(0.0, f * d_model**-0.5), name=at_any_depth("dense.weight", "out_proj.weight"),
             within="T5ClassificationHead"),
        Rule(Normal(0.0, f * 1.0), name=at_any_depth("classifier.weight"), within="T5ForTokenClassification"),
        Rule(Normal(0.0, f * d_model**-0.5), name=at_any_depth("qa_outputs.weight"),
             within="T5ForQuestionAnswering"),
        Rule(Normal(0.0, f * 1.0), name=at_any_depth("shared.weight"), within=model_level),
    ]
    if not _get(config, "tie_word_embeddings", True):
        rules.append(Rule(Normal(0.0, f * 1.0), name=at_any_depth("lm_head.weight"),
                          within="T5ForConditionalGeneration"))
    return rules


_FAMILY_RULES = {"base": lambda config: [], "gpt2": _gpt2, "bert": _bert, "vit": _vit, "t5": _t5}


def _base(std: float) -> list[Rule]:
    return [
        Rule(Normal(0.0, std), kind=_MATRICES, role="weight"),
        Rule(Zeros(), kind=_MATRICES, role="bias"),
        Rule(XavierUniform(), kind="LSTM", role=("weight_ih", "weight_hh", "weight_hr")),
        Rule(Zeros(), kind="LSTM", role=("bias_ih", "bias_hh")),
        Rule(PaddingZeroed(Normal(0.0, std)), kind="Embedding", role="weight"),
        # MultiheadAttention: its out_proj is a Linear (children first), then _reset_parameters
        Rule(Normal(0.0, std), kind="attention", role="out_proj_weight"),
        Rule(Ones(), kind=NORM_CLASS_NAMES, role="weight"),
        Rule(Zeros(), kind=NORM_CLASS_NAMES, role="bias"),
        Rule(Zeros(), kind=NORM_CLASS_NAMES, role=("running_mean", "num_batches_tracked"), buffers=True),
        Rule(Ones(), kind=NORM_CLASS_NAMES, role="running_var", buffers=True),
    ]


def hf(config) -> Recipe:
    """The recipe that draws what a transformers model's ``_init_weights`` draws.

    Args:
        config: the model's config (``model.config``, a transformers
            ``PretrainedConfig``) or its ``to_dict()``. Read: ``model_type``,
            ``initializer_range`` (or ``init_std``/``initializer_factor``),
            GPT-2's ``n_layer``, T5's ``initializer_factor``, ``d_model``,
            ``d_kv``, ``d_ff``, ``num_heads`` and ``tie_word_embeddings``.

    ``xinit.torch.initialize(model, "hf", key=...)`` builds this from
    ``model.config`` and first checks that the model's ``_init_weights`` is one
    this module reproduces (:data:`HF_INIT_WEIGHTS`): ``PreTrainedModel``'s own
    (Llama and most decoders), GPT-2's, BERT's, ViT's or T5's. Called directly,
    a ``model_type`` other than those of :data:`HF_FAMILIES` gets the
    ``PreTrainedModel`` rules alone.

    >>> r = hf({"model_type": "gpt2", "initializer_range": 0.02, "n_layer": 12})
    >>> r.rules[0].init
    normal(mean=0.0, std=0.004082482904638631)
    """
    if config is None:
        raise ValueError(
            "the 'hf' recipe is built from a transformers model's config: pass hf(model.config), "
            "or pass the string 'hf' to xinit.torch.initialize/materialize, which read model.config"
        )
    model_type = _get(config, "model_type")
    family = HF_FAMILIES.get(model_type, "base")
    rules = _FAMILY_RULES[family](config) + _base(_base_std(config))
    return Recipe("hf", tuple(rules)) + torch_default()
