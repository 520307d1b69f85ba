"""The ``"timm"`` recipe: what timm (1.0) gives its models when it builds them.

Each timm architecture initializes itself in its constructor; :func:`timm`
writes those schemes as rules, each gated by the architecture's class
(``within=``, by qualified name, so subclasses match too):

- ``ResNet`` (``timm.models.resnet``): every ``Conv2d`` (``Conv2dSame`` and
  other subclasses included) ``kaiming_normal_(mode="fan_out",
  nonlinearity="relu")``; with ``zero_init_last`` (timm's default, which the
  model does not keep) the last norm weight of each residual block 0
  (``bn2`` of ``BasicBlock``, ``bn3`` of ``Bottleneck``); the rest as torch's
  layers make it (``fc`` the Linear default, norms 1/0).
- ``VisionTransformer`` (ViT, DeiT, DeiT-3; ``weight_init=''``, the default):
  ``Linear`` weights ``trunc_normal_(std=.02)`` (absolute bounds +-2), biases
  0; ``pos_embed`` the same, ``cls_token``/``reg_token`` N(0, 1e-6); a
  ``SwiGLU`` MLP's gate ``fc1_g`` N(0, 1e-6) with bias 1; the patch embedding
  and norms as torch's layers make them.
- ``ConvNeXt``: ``Conv2d`` and ``Linear`` weights ``trunc_normal_(std=.02)``,
  biases 0 (the head scaled by ``convnext_head_init_scale``); each block's
  layer scale ``gamma`` ``convnext_ls_init_value``. ConvNeXt blocks do not keep
  that value, so the recipe uses timm's default, 1e-6: pass the value the model
  was built with if it was another. ``GlobalResponseNorm`` (ConvNeXt-V2) 0.
- ``SwinTransformer``: ``Linear`` weights ``trunc_normal_(std=.02)``, biases 0;
  ``relative_position_bias_table`` ``trunc_normal_(std=.02)``.
- Anywhere: ``LayerScale``/``LayerScale2d`` ``gamma`` its own ``init_values``
  (read from each layer; DeiT-3, EVA, CaiT...).

Then :func:`~xinit.core.recipes.torch_default`. Computed buffers (Swin's
``relative_position_index`` and ``attn_mask``, EVA's rotary tables) are never
written by a rule; ``xinit.torch.materialize`` recomputes them through timm's
``init_non_persistent_buffers`` when they are on ``meta``.

Not covered (the model's own values differ from these rules): ViT's
``weight_init`` modes ``jax``/``moco`` and ``fix_init=True``, ``GluMlp``'s
half-tensor gate init, ``ResPostBlock``'s norm ``init_values``, and timm
architectures other than the four above (their layers get the rules above
that name their classes, then torch's defaults).

Nothing here imports timm: classes are named, and rules match subclasses.
"""

from __future__ import annotations

from .recipes import AttrConstant, Recipe, Rule, at_any_depth, torch_default
from .specs import Constant, KaimingNormal, Normal, Ones, TruncNormal, Zeros

__all__ = ["timm"]

_CONV2D = "torch.nn.modules.conv.Conv2d"
_LINEAR = "torch.nn.modules.linear.Linear"
_RESNET = "timm.models.resnet.ResNet"
_VIT = "timm.models.vision_transformer.VisionTransformer"
_CONVNEXT = "timm.models.convnext.ConvNeXt"
_SWIN = "timm.models.swin_transformer.SwinTransformer"
_LAYER_SCALE = ("timm.layers.layer_scale.LayerScale", "timm.layers.layer_scale.LayerScale2d")


def _trunc(std: float) -> TruncNormal:
    """timm's ``trunc_normal_(std=std)``: bounds -2 and 2, absolute."""
    return TruncNormal(0.0, std, -2.0, 2.0)


def timm(zero_init_last: bool = True, convnext_ls_init_value: float = 1e-6,
         convnext_head_init_scale: float = 1.0) -> Recipe:
    """What timm's ResNet, ViT/DeiT/DeiT-3, ConvNeXt and Swin give their parameters.

    Args:
        zero_init_last: ResNet's ``zero_init_last`` (timm's default True).
        convnext_ls_init_value: ConvNeXt's ``ls_init_value`` (timm's default
            1e-6), the value of each block's ``gamma``.
        convnext_head_init_scale: ConvNeXt's ``head_init_scale`` (default 1).

    >>> timm().rules[0]
    Rule(zeros(), kind='norm', role='weight', name=('bn2.weight', '*.bn2.weight'), within='timm.models.resnet.BasicBlock')
    """
    if not isinstance(zero_init_last, bool):
        raise TypeError(f"timm: zero_init_last must be True or False; got {zero_init_last!r}")
    s = float(convnext_head_init_scale)
    rules = []
    if zero_init_last:
        rules += [
            Rule(Zeros(), kind="norm", role="weight", name=at_any_depth("bn2.weight"),
                 within="timm.models.resnet.BasicBlock"),
            Rule(Zeros(), kind="norm", role="weight", name=at_any_depth("bn3.weight"),
                 within="timm.models.resnet.Bottleneck"),
        ]
    rules += [
        Rule(KaimingNormal(mode="fan_out", nonlinearity="relu"), kind=_CONV2D, role="weight",
             within=_RESNET),
        # VisionTransformer.init_weights: its own tokens, then init_weights_vit_timm per module
        Rule(_trunc(0.02), kind=_VIT, role="pos_embed"),
        Rule(Normal(0.0, 1e-6), kind=_VIT, role=("cls_token", "reg_token")),
        Rule(Normal(0.0, 1e-6), kind=_LINEAR, role="weight", name=at_any_depth("fc1_g.weight"),
             within="timm.layers.mlp.SwiGLU"),
        Rule(Ones(), kind=_LINEAR, role="bias", name=at_any_depth("fc1_g.bias"),
             within="timm.layers.mlp.SwiGLU"),
        Rule(_trunc(0.02), kind=_LINEAR, role="weight", within=(_VIT, _SWIN)),
        Rule(Zeros(), kind=_LINEAR, role="bias", within=(_VIT, _SWIN)),
        Rule(_trunc(0.02), kind="timm.models.swin_transformer.WindowAttention",
             role="relative_position_bias_table"),
        # ConvNeXt's _init_weights
        *([Rule(TruncNormal(0.0, 0.02 * s, -2.0 * s, 2.0 * s), kind=_LINEAR, role="weight",
                name=("head.*", "*.head.*"), within=_CONVNEXT)] if s != 1.0 else []),
        Rule(_trunc(0.02), kind=(_CONV2D, _LINEAR), role="weight", within=_CONVNEXT),
        Rule(Zeros(), kind=(_CONV2D, _LINEAR), role="bias", within=_CONVNEXT),
        Rule(Constant(float(convnext_ls_init_value)), kind="timm.models.convnext.ConvNeXtBlock",
             role="gamma"),
        Rule(Zeros(), kind="timm.layers.grn.GlobalResponseNorm", role=("weight", "bias")),
        Rule(AttrConstant("init_values"), kind=_LAYER_SCALE, role="gamma"),
    ]
    return Recipe("timm", tuple(rules)) + torch_default()
