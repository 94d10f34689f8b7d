"""LoRA (Hu et al. 2021): y = W x + b + (alpha / r) * B A x, with A (r, in) and B (out, r), B starting at zero.

`apply_lora(model, LoraConfig(...))` swaps the chosen `nn.Linear` modules for `LoraLinear` in place (the model is not
copied or forked; the base weight and bias stay the same Parameter objects under the same names) and freezes every
base parameter. `merge` folds B A into W (inference at base speed), `unmerge` takes it out again, `merge_and_unload`
returns plain `nn.Linear`s (a normal checkpoint). Adapters save alone in PEFT's layout: `adapter_config.json` and
`adapter_model.safetensors` with keys `base_model.model.<HF module>.lora_A.weight`, which `peft.PeftModel` loads onto
the matching `transformers` model, and which `load_adapter` loads back onto ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.limits import check_finite
from ..files import atomic_dir, write_json
from ..layers.linear import Linear
from ..text import read_json
from .lora_linear import LoraError, LoraLinear

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTENTION_TARGETS  # leaf module names; MLP_TARGETS on request
    train_norms: bool = False
    train_embeddings: bool = False
    extra: dict = field(default_factory=dict)  # provenance (base model), written into adapter_config.json

    def validate(self) -> LoraConfig:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise LoraError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise LoraError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise LoraError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise LoraError("LoRA needs at least one target module, e.g. q_proj,v_proj")
        self.targets = tuple(self.targets)
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    from ..quant import QuantLinear  # a quantized base (QLoRA, qlora.py)

    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear)) and name}


def _adapter_class(module: nn.Module) -> type[LoraLinear]:
    from ..quant import QuantLinear

    if isinstance(module, QuantLinear):
        from .qlora import QuantLoraLinear

        return QuantLoraLinear
    return LoraLinear


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Swap the target linears for LoraLinear in place and freeze everything else (norms and embeddings unless the
    config asks for them). Returns the model. Raises LoraError for a target the model does not have."""
    config.validate()
    linears = _linears(model)
    available = sorted({name.rsplit(".", 1)[-1] for name in linears})
    unknown = [t for t in config.targets if t not in available]
    if unknown:
        raise LoraError(f"no linear module named {unknown} in this model; choose among {', '.join(available)}")
    if any(isinstance(m, LoraLinear) for m in linears.values()):
        raise LoraError("the model already has LoRA adapters; merge_and_unload() it first or load a fresh model")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in linears.items():
        if name.rsplit(".", 1)[-1] in config.targets:
            parent_name, _, leaf = name.rpartition(".")
            adapter = _adapter_class(module)(module, config.r, config.alpha, config.dropout)
            setattr(model.get_submodule(parent_name), leaf, adapter)
    for name, p in model.named_parameters():
        is_norm = "norm" in name.rsplit(".", 2)[-2] if "." in name else False
        if (config.train_norms and is_norm) or (config.train_embeddings and name.startswith("embed")):
            p.requires_grad_(True)
    model.lora_config = config
    return model


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def merge(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.merge()


def unmerge(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights and put plain nn.Linear modules back: a normal model to save."""
    for name, m in lora_modules(model).items():
        if hasattr(m, "unloaded"):  # over a quantized base (qlora.py): float layers of the dequantized base + B A
            plain = m.unloaded()
        else:
            m.merge()
            plain = Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            plain.weight, plain.bias = m.weight, m.bias
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("lora_config", None)
    return model


# ---- adapters on disk, in PEFT's layout ---------------------------------------------------------------------------
def _peft_module(name: str) -> str:
    """Our module name -> the module name of the transformers model (PEFT's key), via the HF checkpoint table."""
    from ..checkpoints.hf import rename

    hf = rename(f"{name}.weight", to_hf=True)
    if hf is None:
        raise LoraError(f"module {name!r} has no Hugging Face name; this architecture's adapters cannot be saved")
    return "base_model.model." + hf.removesuffix(".weight")


def _peft_param(name: str) -> str:
    from ..checkpoints.hf import rename

    hf = rename(name, to_hf=True)
    if hf is None:
        raise LoraError(f"parameter {name!r} has no Hugging Face name; this architecture's adapters cannot be saved")
    return "base_model.model." + hf


def _trained_base(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters that are not adapters (norm gains, embeddings, when asked for)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (only the adapters: a few MB)."""
    modules = lora_modules(model)
    if not modules:
        raise LoraError("the model has no LoRA adapters to save; apply_lora(model, ...) first")
    config: LoraConfig = model.lora_config
    directory = Path(directory)
    tensors = {}
    for name, m in modules.items():
        key = _peft_module(name)
        tensors[f"{key}.lora_A.weight"] = m.lora_A.detach().contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = m.lora_B.detach().contiguous().cpu()
    for name, p in _trained_base(model).items():  # norms or embeddings the config chose to train
        tensors[_peft_param(name)] = p.detach().contiguous().cpu()
    peft = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "modules_to_save": None,
        "base_model_name_or_path": config.extra.get("base_model"),
    }
    with atomic_dir(directory, replaces=("adapter_*",)) as staging:  # weights and config swapped in together
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt"})
        write_json(staging / CONFIG_NAME, peft)
    return directory


def _adapter_config(directory: Path) -> LoraConfig:
    """adapter_config.json read and checked: a LoRA with a rank, an alpha and its target modules."""
    path = directory / CONFIG_NAME
    peft = read_json(path, "adapter config (restore it, or save the adapter again)", LoraError)
    if not isinstance(peft, dict) or peft.get("peft_type", "LORA") != "LORA":
        kind = peft.get("peft_type") if isinstance(peft, dict) else type(peft).__name__
        raise LoraError(f"{path}: a LoRA adapter config is a JSON object with peft_type 'LORA', got {kind!r}")
    try:
        targets = peft["target_modules"]
        return LoraConfig(
            r=int(peft["r"]),
            alpha=float(peft["lora_alpha"]),
            dropout=float(peft.get("lora_dropout", 0.0)),
            targets=tuple([targets] if isinstance(targets, str) else targets),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise LoraError(f"{path}: r, lora_alpha and target_modules must be numbers and names ({e!r})") from None


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in `directory` (by us or by PEFT) to a base model; returns the model."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise LoraError(f"{directory} has no {name}; give a directory written by save_adapter or by PEFT")
    config = _adapter_config(directory)
    apply_lora(model, config)
    try:
        tensors = load_file(directory / WEIGHTS_NAME)
    except (SafetensorError, OSError) as e:
        raise LoraError(f"{directory / WEIGHTS_NAME} cannot be read ({e}); the file is truncated or corrupt") from e
    check_finite(tensors, directory / WEIGHTS_NAME)
    for name, m in lora_modules(model).items():
        key = _peft_module(name)
        for part in ("lora_A", "lora_B"):
            stored = tensors.pop(f"{key}.{part}.weight", None)
            if stored is None:
                raise LoraError(f"{directory}: no tensor for {key}.{part}; the adapter does not fit this model")
            getattr(m, part).data.copy_(stored)
    from ..checkpoints.hf import rename

    for name, p in model.named_parameters():
        hf = rename(name, to_hf=True) if ".lora_" not in name else None
        stored = tensors.pop(f"base_model.model.{hf}", None) if hf is not None else None
        if stored is not None:  # a trained norm or embedding saved with the adapter
            p.data.copy_(stored)
    if tensors:
        raise LoraError(f"{directory}: tensors {sorted(tensors)[:4]} have no place in this model")
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
