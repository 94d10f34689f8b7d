"""The Vision Transformer member (Dosovitskiy et al. 2021): an image is cut into P x P patches, each patch projected
to a token (a strided convolution, the same as flattening each patch and one Linear), a learned class token put in
front, learned positions added; then the encoder's pre-norm blocks, a final norm, and a linear head on the class
token's state. With class_token=False (SigLIP, the vision tower of SmolVLM / Idefics3) there is no class token: one
learned position per patch, and the final norm's states of the patches are the output (head "none").

Shapes: B images, C channels, H = W image side, P patch side, N = (H/P)^2 patches, D width, L labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoder import init_weights
from .layers.block import Block
from .layers.linear import Linear
from .layers.norm import make_norm
from .layers.positions import make_positions
from .model import ModelOutput, Transformer, collected, recording_if


class ImageShapeError(ValueError):
    """An image batch that does not fit the model; the message names the expected shape."""


class ViT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config.validate()
        if cfg.family != "vit":
            raise ValueError(f"ViT needs a config of family 'vit', got {cfg.family!r}")
        P = cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.n_channels, cfg.d_model, kernel_size=P, stride=P)  # one token per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.class_token else None
        self.positions = make_positions(cfg, bidirectional=True)  # (N + 1, D), or (N, D) without the class token
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.classifier = Linear(cfg.d_model, cfg.n_classes, bias=True) if cfg.head == "classify" else None
        if not self.embed_weight.is_meta:
            init_weights(self, cfg.init_std)

    from_state_dict = classmethod(Transformer.from_state_dict.__func__)

    @property
    def embed_weight(self) -> torch.Tensor:
        return self.patch_embed.weight

    def reset_rope(self) -> None:  # no non-persistent buffers (the loader's hook)
        pass

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, C, H, W)
        *,
        output_attentions: bool = False,  # also each layer's attention probabilities (B, H, N + 1, N + 1)
        output_hidden_states: bool = False,  # also the embeddings and each block's output (B, N + 1, D)
    ) -> torch.Tensor | ModelOutput:  # (B, L) logits, float32 (or (B, N + 1, D) headless); a ModelOutput if asked
        states = [] if output_hidden_states else None
        with recording_if(output_attentions, [block.attn for block in self.blocks]) as probs:
            x = self.hidden_states(pixel_values, states)  # (B, N + 1, D)
        logits = (self.classifier(x[:, 0]) if self.classifier is not None else x).float()
        if not (output_attentions or output_hidden_states):
            return logits
        return ModelOutput(logits, attentions=collected(probs), hidden_states=None if states is None else tuple(states))

    def hidden_states(self, pixel_values: torch.Tensor, states=None) -> torch.Tensor:  # (B, C, H, W) -> (B, N + 1, D)
        """The final norm's output; `states`, a list, receives the embeddings and each block's output (before the
        final norm, as transformers' ViT gives them)."""
        cfg = self.config
        self.check_images(pixel_values)
        x = self.patch_embed(pixel_values.to(self.embed_weight.dtype))  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D): patches in row-major order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N + 1, D)
        x = self.positions.add(x, torch.arange(x.shape[1], device=x.device))  # (B, N + 1, D)
        x = F.dropout(x, cfg.embed_dropout, self.training) if cfg.embed_dropout else x
        keep = states.append if states is not None else lambda _: None  # (B, N + 1, D) each, only if asked
        keep(x)
        for block in self.blocks:
            x = block(x, None, None)  # no mask: every patch sees every other (causal=False)
            keep(x)
        return self.norm(x)

    def check_images(self, pixel_values) -> None:
        cfg = self.config
        want = f"(batch, {cfg.n_channels}, {cfg.image_size}, {cfg.image_size})"
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            raise ImageShapeError(f"pixel_values must be a float tensor {want}, got {type(pixel_values).__name__}")
        shape = tuple(pixel_values.shape)
        if pixel_values.dim() != 4 or shape[1] != cfg.n_channels:
            raise ImageShapeError(
                f"pixel_values of shape {shape} do not fit this model: it takes {want} images with "
                f"{cfg.n_channels} channel(s); convert the images (e.g. to {'RGB' if cfg.n_channels == 3 else 'L'})"
            )
        if shape[2:] != (cfg.image_size, cfg.image_size):
            raise ImageShapeError(
                f"images of {shape[2]}x{shape[3]} pixels do not fit this model, which takes {cfg.image_size}x"
                f"{cfg.image_size} (its {cfg.n_patches} patch positions are learned); resize the images to "
                f"{cfg.image_size}x{cfg.image_size}"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
