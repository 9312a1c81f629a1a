"""The official release weights: one row per checkpoint, everything known about it in one place.

Like timm's pretrained configs and torchvision's `Weights`, each row says where a checkpoint is
published and how images must be prepared for it (timm's evaluation transform: resize the shorter
side to floor(size / crop_pct) with `interpolation`, centre-crop, normalise with `mean`/`std`).
`create_model` takes its class count from here, the export's download its URL and file name, and the
ONNX metadata writer its preprocessing, so no second copy can drift from this one. The serving side
(`runtime/`, torch-free) never imports this module: it reads the same values back from the ONNX
file's metadata.

Facts are from the official repository (LMMMEng/TransXNet): the URLs and top-1 from its README and
release v1.0, the transforms from `models/transxnet.py` (`_cfg(crop_pct=0.9)` for T and S, 0.95 for
B, timm's ImageNet mean/std, bicubic). The official code registers no separate configuration for
B at 384, so it inherits B's; its README reports no top-1 for it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: timm's `IMAGENET_DEFAULT_MEAN` / `IMAGENET_DEFAULT_STD`, which the official code imports.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

RELEASE_URL = "https://github.com/LMMMEng/TransXNet/releases/download/v1.0/"


@dataclass(frozen=True)
class PretrainedCfg:
    """One released checkpoint: where it lives, what it expects, how well it was reported to do."""

    variant: str
    image_size: int
    file_name: str
    crop_pct: float
    top1: float | None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    num_classes: int = 1000

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file_name

    @property
    def tag(self) -> str:
        """timm-style name, e.g. 'transxnet_b.in1k_384'."""
        size = "" if self.image_size == 224 else f"_{self.image_size}"
        return f"{self.variant}.in1k{size}"


#: Every official ImageNet-1k release; the first row of a variant is its default (224 px).
PRETRAINED_CFGS: tuple[PretrainedCfg, ...] = (
    PretrainedCfg("transxnet_t", 224, "transx-t.pth.tar", crop_pct=0.9, top1=81.6),
    PretrainedCfg("transxnet_s", 224, "transx-s.pth.tar", crop_pct=0.9, top1=83.8),
    PretrainedCfg("transxnet_b", 224, "transx-b.pth.tar", crop_pct=0.95, top1=84.6),
    PretrainedCfg("transxnet_b", 384, "transx-b-384.pth.tar", crop_pct=0.95, top1=None),
)


def pretrained_cfg(variant: str, image_size: int) -> PretrainedCfg:
    """The release for exactly (canonical `variant`, `image_size`); `ValueError` lists what exists."""
    for cfg in PRETRAINED_CFGS:
        if (cfg.variant, cfg.image_size) == (variant, image_size):
            return cfg
    available = ", ".join(f"{cfg.variant} at {cfg.image_size}" for cfg in PRETRAINED_CFGS)
    raise ValueError(
        f"no official checkpoint for {variant} at image size {image_size}; releases exist for: "
        f"{available}. Pass a local checkpoint or URL instead, or omit it for a random init."
    )


def default_cfg(variant: str) -> PretrainedCfg:
    """The variant's default release (its first row); `ValueError` for a variant without one."""
    for cfg in PRETRAINED_CFGS:
        if cfg.variant == variant:
            return cfg
    raise ValueError(
        f"no release describes {variant!r}; known: {sorted({c.variant for c in PRETRAINED_CFGS})}"
    )


def eval_cfg(variant: str, image_size: int) -> PretrainedCfg:
    """The row whose evaluation transform a (variant, image_size) model uses: its own release if one
    exists, else the variant's default (the official code has one transform per variant, so a model
    at another size, or with its own checkpoint, is evaluated as the variant's release was)."""
    for cfg in PRETRAINED_CFGS:
        if (cfg.variant, cfg.image_size) == (variant, image_size):
            return cfg
    return default_cfg(variant)
