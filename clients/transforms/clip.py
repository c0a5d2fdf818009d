"""Clipping of a client's delta: by its global L2 norm, or per layer (two variants).

- ``clip_global``: Delta <- Delta * min(1, C / ||Delta||), the clipping of DP-FedAvg (McMahan,
  Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018,
  arXiv 1710.06963); Flower's ``compute_clip_model_update`` is the same flat clip.
- ``clip_per_layer``: each layer l is clipped to its own budget C_l (||Delta_l|| <= C_l).
- ``clip_per_layer_normalized``: the per-layer clipping with layer-wise normalization of
  "Enabling Differentially Private Federated Learning for Speech Recognition: Benchmarks,
  Adaptive Optimizers and Gradient Clipping" (Pelikan et al., Apple 2023, arXiv 2310.00098;
  reference code apple/ml-pfl4asr, ``clip_layer_grads*``): when the update's global norm is at
  least C, EVERY layer is rescaled to norm exactly C_l; below C the update is left as it is.

Layer budgets (``layer_budget``): ``uniform`` C_l = C / sqrt(L), or ``dimension``
C_l = C * sqrt(size_l / d). Both give sum_l C_l^2 = C^2, so a clipped update's global norm is
at most C and the Gaussian noise calibrated to C stays valid.

The clip norm is ``clip`` unless the job's config carries ``dp_clip_norm`` (set by the server's
adaptive clipping through ``Strategy.configure``). Each row reports ``update_norm`` (before
clipping) and ``dp_unclipped`` (1 if ||Delta|| <= C, the bit adaptive clipping counts).
"""

from __future__ import annotations

import math

import torch

from clients.transforms import CLIENT_TRANSFORMS, ClientContext
from fedsim.params import ParamLayout

__all__ = ["ClipGlobal", "ClipPerLayer", "layer_budgets", "CLIP_NORM_KEY", "LAYER_BUDGETS"]

CLIP_NORM_KEY = "dp_clip_norm"  # job config key: the clip norm the server asks this job to use
LAYER_BUDGETS = ("uniform", "dimension")


def _clip_norms(ctx: ClientContext, default: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [float(c.get(CLIP_NORM_KEY, default)) for c in ctx.configs], dtype=like.dtype, device=like.device
    )


def layer_budgets(layout: ParamLayout, clip: float, budget: str) -> list[float]:
    """C_l per layer (tensor of the layout), with sum_l C_l^2 = clip^2."""
    sizes = [b - a for a, b in layout.offsets()]
    if budget == "uniform":
        return [clip / math.sqrt(len(sizes))] * len(sizes)
    if budget == "dimension":
        total = sum(sizes)
        return [clip * math.sqrt(n / total) for n in sizes]
    raise ValueError(f"layer_budget '{budget}' is not one of {', '.join(LAYER_BUDGETS)}")


def _check_clip(clip: float) -> float:
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"privacy.clip must be a positive number, got {clip!r}")
    return float(clip)


@CLIENT_TRANSFORMS.register("clip_global", "scale the delta to L2 norm <= C (DP-FedAvg, McMahan et al. 2018)")
class ClipGlobal:
    name = "clip_global"

    def __init__(self, clip: float):
        self.clip = _check_clip(clip)

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        norms = torch.linalg.vector_norm(updates, dim=1)
        clip = _clip_norms(ctx, self.clip, norms)
        scale = torch.clamp(clip / torch.clamp(norms, min=1e-12), max=1.0)
        return updates * scale[:, None], {"update_norm": norms, "dp_unclipped": (norms <= clip).to(norms.dtype)}


@CLIENT_TRANSFORMS.register("clip_per_layer", "each layer clipped to its budget C_l; sum C_l^2 = C^2")
class ClipPerLayer:
    name = "clip_per_layer"

    def __init__(self, clip: float, layer_budget: str = "uniform", normalize: bool = False):
        self.clip = _check_clip(clip)
        if layer_budget not in LAYER_BUDGETS:
            raise ValueError(f"privacy.layer_budget '{layer_budget}' is not one of {', '.join(LAYER_BUDGETS)}")
        self.layer_budget = layer_budget
        self.normalize = normalize

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        norms = torch.linalg.vector_norm(updates, dim=1)
        clip = _clip_norms(ctx, self.clip, norms)
        fractions = torch.tensor(layer_budgets(ctx.layout, 1.0, self.layer_budget), dtype=updates.dtype)
        out = updates.clone()
        over = norms >= clip  # normalization applies only to updates at or over the global clip
        for (a, b), fraction in zip(ctx.layout.offsets(), fractions.tolist()):
            layer = updates[:, a:b]
            layer_norms = torch.clamp(torch.linalg.vector_norm(layer, dim=1), min=1e-12)
            budget = clip * fraction
            if self.normalize:
                scale = torch.where(over, budget / layer_norms, torch.ones_like(layer_norms))
            else:
                scale = torch.clamp(budget / layer_norms, max=1.0)
            out[:, a:b] = layer * scale[:, None]
        return out, {"update_norm": norms, "dp_unclipped": (norms <= clip).to(norms.dtype)}


CLIENT_TRANSFORMS.register(
    "clip_per_layer_normalized",
    "when ||Delta|| >= C every layer is rescaled to norm C_l (Pelikan et al. 2023, ml-pfl4asr)",
)(lambda clip, layer_budget="uniform": ClipPerLayer(clip, layer_budget, normalize=True))
