"""The vision-language member (SmolVLM, Idefics3; the layout NVIDIA's Eagle 2.5 shares in GR00T N1.5): a SigLIP vision
tower, the pixel-shuffle projector, and any decoder of the family.

- the tower is our ViT with SigLIP's choices: no class token, one learned position per patch, pre-norm LayerNorm
  blocks with biases, tanh GELU, its final norm's patch states as the output (config.vision, family "vit");
- the projector concatenates each s x s block of neighbouring patch features into one vector (s = pixel_shuffle,
  Idefics3's pixel shuffle: s^2 fewer tokens, s^2 times wider) and maps it to the decoder's width with one Linear
  without bias;
- the decoder is the one Transformer; the embeddings of its `image_token_id` tokens are replaced, in order, by the
  image features (image_tokens of them per image), everything else is the decoder as it is.

Shapes: B sequences, T tokens, I images, C channels, H = W image side, P patch side, N = (H/P)^2 patches, s the
pixel shuffle, Dv the tower's width, D the decoder's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .layers.linear import Linear
from .model import Transformer
from .vit import ViT

_VLM_FIELDS = {"family": "decoder", "head": "lm", "vision": None, "image_token_id": 0, "pixel_shuffle": 1}


def decoder_config(cfg: ModelConfig) -> ModelConfig:
    """The language model's config: the VLM's own fields, as a plain decoder."""
    return ModelConfig.from_dict({**cfg.to_dict(), **_VLM_FIELDS}, "the VLM's decoder").validate()


def vision_config(cfg: ModelConfig) -> ModelConfig:
    return ModelConfig.from_dict(cfg.vision, "the VLM's vision tower").validate()


def pixel_shuffle(x: torch.Tensor, s: int) -> torch.Tensor:  # (I, N, Dv) -> (I, N / s^2, Dv * s^2)
    """Each s x s block of the (sqrt(N), sqrt(N)) patch grid as one vector, in Idefics3's order."""
    n_images, N, Dv = x.shape
    side = math.isqrt(N)
    x = x.reshape(n_images, side, side // s, Dv * s)  # (I, rows, column blocks, s patches of a row)
    x = x.permute(0, 2, 1, 3).reshape(n_images, side // s, side // s, Dv * s * s)  # (I, column blocks, row blocks, .)
    return x.permute(0, 2, 1, 3).reshape(n_images, N // (s * s), Dv * s * s)  # (I, N / s^2, Dv s^2)


class VLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config.validate()
        if cfg.family != "vlm":
            raise ValueError(f"VLM needs a config of family 'vlm', got {cfg.family!r}")
        self.source = None
        self.vision = ViT(vision_config(cfg))
        s = cfg.pixel_shuffle
        self.projector = Linear(self.vision.config.d_model * s * s, cfg.d_model, bias=False)
        self.text = Transformer(decoder_config(cfg))
        if not self.projector.weight.is_meta:
            nn.init.normal_(self.projector.weight, std=cfg.init_std)

    from_state_dict = classmethod(Transformer.from_state_dict.__func__)

    def reset_rope(self) -> None:  # the loader's hook after a meta-device build
        self.text.reset_rope()

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Logits (B, T, V) of the decoder over `input_ids`, whose image tokens read the images' features;
        pixel_values (I, C, H, W), or (B, I, C, H, W) with all-zero images as padding (Idefics3's batches).
        kwargs: the decoder's (input_pos, cache, attention_mask, last_only)."""
        embeds = None
        if pixel_values is not None:
            embeds = self.merge(input_ids, self.image_features(pixel_values))  # (B, T, D)
        return self.text(input_ids, embeds=embeds, **kwargs)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # -> (I, image_tokens, D)
        images = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values  # (I, C, H, W)
        if pixel_values.dim() == 5:
            images = images[images.flatten(1).ne(0).any(-1)]  # padding images are all zeros
        x = self.vision.hidden_states(images)  # (I, N, Dv)
        return self.projector(pixel_shuffle(x, self.config.pixel_shuffle))  # (I, N / s^2, D)

    def merge(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:  # -> (B, T, D)
        """The decoder's token embeddings with the image tokens' rows replaced by the features, in order."""
        x = self.text.token_embeddings(input_ids)  # (B, T, D)
        slots = input_ids == self.config.image_token_id  # (B, T)
        n = int(slots.sum())
        if n != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"the text holds {n} image tokens (id {self.config.image_token_id}) but the images give "
                f"{features.shape[0]} x {features.shape[1]} features: put {self.config.image_tokens} image tokens "
                "in the text for each image"
            )
        return x.masked_scatter(slots[..., None], features.to(x.dtype))  # (B, T, D)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
