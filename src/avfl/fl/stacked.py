"""Stacked kernels: the forward and backward passes of the built-in frozen-mode model, written
out, for rows of (run, client) that train in lockstep.

Why not autograd: one local step of this model is a handful of small matrix products per
row (16 clips x 768 features x 128 units), microseconds of arithmetic. Under
`torch.func.vmap` + autograd each step costs hundreds of dispatched operations, and the
backward pass of a stacked linear layer goes through transposes and copies. Here a step is
the ~60 batched products and elementwise operations the model needs, with no tape; the
gradients go straight into the optimizer's flat buffer (fl/optimizer.py), which one fused
Adam call then updates: local training takes a fraction of the time autograd takes
(benchmarks/local_step.py measures both).

A task opts in by defining `stacked(rows, batch) -> per-row loss`: it calls the blocks below
(encoders, linear layers, the fusion head, prototype heads, losses) forward, then backward in
reverse order, and the blocks write the gradients of the trained tensors into `rows.grads`.
Everything a row computes reads only that row's slices, and every reduction runs within a
row, so a row's numbers do not depend on the rows beside it (tests/test_local.py). Each
task's loss and gradients equal autograd's of its own `sample_loss` (tests/test_stacked.py,
in float64). Models these blocks do not describe (fine-tuning mode, BatchNorm, a plugin's
own layers) and tasks without `stacked` train through the generic vmapped path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from avfl.models.dropout import PooledDropout
from avfl.models.heads import AVModel, PrototypeHead

ENCODER_LAYOUT = (nn.LayerNorm, nn.Linear, nn.ReLU, PooledDropout, nn.Linear, nn.ReLU)
FUSION_LAYOUT = (nn.Linear, nn.ReLU, nn.Linear)


def supports(model: nn.Module) -> bool:
    """True when every part the blocks compute is laid out as AVModel builds it in frozen mode."""
    models = [model] + (
        [model.teacher] if isinstance(getattr(model, "teacher", None), nn.Module) else []
    )
    for m in models:
        if not isinstance(m, AVModel):
            return False
        if not all(
            isinstance(getattr(m, f"{x}_backbone"), nn.Identity) for x in ("audio", "visual")
        ):
            return False
        for name, layout in (("audio_encoder", ENCODER_LAYOUT), ("visual_encoder", ENCODER_LAYOUT),
                             ("fusion_head", FUSION_LAYOUT)):  # fmt: skip
            seq = getattr(m, name)
            if len(seq) != len(layout) or any(
                type(s) is not t for s, t in zip(seq, layout, strict=True)
            ):
                return False
        if not all(isinstance(getattr(m, f"{x}_head"), nn.Linear) for x in ("audio", "visual")):
            return False
        # The blocks read every LayerNorm's affine and every linear layer's bias.
        for layer in m.modules():
            if isinstance(layer, nn.LayerNorm) and (
                layer.weight is None or layer.bias is None or len(layer.normalized_shape) != 1
            ):
                return False
            if isinstance(layer, nn.Linear) and layer.bias is None:
                return False
    for name in ("audio_prototypes", "visual_prototypes"):
        if hasattr(model, name) and not isinstance(getattr(model, name), PrototypeHead):
            return False
    return True


@dataclass
class Batch:
    """One step's samples of g rows: inputs (g, B, ...), labels (g, B), and sample weights (g, B)
    that already divide by each row's number of real samples (padding weighs 0)."""

    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    values: Mapping[str, torch.Tensor] = field(default_factory=dict)  # per-row numbers (g,)


@dataclass
class _EncoderCache:
    prefix: str
    normalised: torch.Tensor  # LayerNorm's input normalised, before its affine
    affine: torch.Tensor  # LayerNorm's output: the first linear layer's input
    hidden: torch.Tensor  # after the first ReLU
    keep: torch.Tensor | None  # dropout's keep scale (0 or 1/(1-p)); None: no dropout
    dropped: torch.Tensor  # the second linear layer's input
    out: torch.Tensor  # after the second ReLU


class Rows:
    """The tensors of g rows (parameters as views into the optimizer's buffers, fixed tensors),
    and the optimizer's gradient buffers, which the backward blocks fill."""

    def __init__(
        self,
        model: nn.Module,
        tensors: Mapping[str, torch.Tensor],
        grads: Mapping[str, torch.Tensor],
        pool: torch.Tensor | None,
        start: Mapping[str, torch.Tensor] | None = None,
        step: int = 0,
    ):
        self.model = model
        self.tensors = tensors
        self.grads = grads  # (g, ...) gradient views of the trained tensors
        self.trained = frozenset(grads)
        self.pool = pool  # (g, noise): this step's dropout noise of each row
        self.start = start  # the trained tensors at the start of local training (penalties)
        self.step = step  # the local step (0: the trained tensors still equal `start`)
        self.written: set[str] = set()

    def _trains(self, prefix: str) -> bool:
        return any(n.startswith(prefix) for n in self.trained)

    def _out(self, name: str) -> torch.Tensor | None:
        """Where a gradient goes (None: not trained); each gradient is written once a step."""
        if name not in self.grads:
            return None
        if name in self.written:
            raise RuntimeError(f"{name}: gradient written twice in one step")
        self.written.add(name)
        return self.grads[name]

    # --- linear layers -------------------------------------------------------------------
    def linear(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T + b per row: (g, B, in) -> (g, B, out)."""
        w, b = self.tensors[f"{prefix}.weight"], self.tensors[f"{prefix}.bias"]
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    def linear_backward(
        self, prefix: str, x: torch.Tensor, dy: torch.Tensor, need_dx: bool = True
    ) -> torch.Tensor | None:
        """Writes the layer's gradients if it is trained; returns d(input) when asked."""
        if (out := self._out(f"{prefix}.weight")) is not None:
            torch.bmm(dy.transpose(1, 2), x, out=out)
        if (out := self._out(f"{prefix}.bias")) is not None:
            torch.sum(dy, dim=1, out=out)
        return torch.bmm(dy, self.tensors[f"{prefix}.weight"]) if need_dx else None

    # --- encoders ------------------------------------------------------------------------
    def encode(self, modality: str, x: torch.Tensor, owner: str = "") -> _EncoderCache:
        """Standardise, LayerNorm, Linear, ReLU, dropout, Linear, ReLU (heads.encoder).

        `owner` is "" for the model itself or "teacher." for the teacher it carries.
        """
        prefix = f"{owner}{modality}_encoder"
        mean = self.tensors[f"{owner}{modality}_input.mean"].unsqueeze(1)
        std = self.tensors[f"{owner}{modality}_input.std"].unsqueeze(1)
        norm: nn.LayerNorm = self.model.get_submodule(f"{prefix}.0")
        normalised = F.layer_norm((x - mean) / std, norm.normalized_shape, eps=norm.eps)
        affine = torch.addcmul(
            self.tensors[f"{prefix}.0.bias"].unsqueeze(1),
            normalised,
            self.tensors[f"{prefix}.0.weight"].unsqueeze(1),
        )
        hidden = self.linear(f"{prefix}.1", affine).clamp_min_(0.0)
        dropout: PooledDropout = self.model.get_submodule(f"{prefix}.3")
        keep = None
        if dropout.training and dropout.p > 0.0 and self.pool is not None:
            g, b, width = hidden.shape
            noise = self.pool[:, dropout.offset : dropout.offset + b * width].view(g, b, width)
            keep = (noise >= dropout.p).to(hidden.dtype).div_(1.0 - dropout.p)
        dropped = hidden * keep if keep is not None else hidden
        out = self.linear(f"{prefix}.4", dropped).clamp_min_(0.0)
        return _EncoderCache(prefix, normalised, affine, hidden, keep, dropped, out)

    def encode_backward(self, cache: _EncoderCache, dout: torch.Tensor) -> None:
        """Gradients of the encoder's tensors from d(output); its input is data (no d(input))."""
        if not self._trains(f"{cache.prefix}."):
            return
        p = cache.prefix
        dh2 = dout * (cache.out > 0)
        ddropped = self.linear_backward(f"{p}.4", cache.dropped, dh2)
        dhidden = ddropped * cache.keep if cache.keep is not None else ddropped
        dh1 = dhidden.mul_(cache.hidden > 0)
        daffine = self.linear_backward(f"{p}.1", cache.affine, dh1)
        if (out := self._out(f"{p}.0.weight")) is not None:
            torch.sum(daffine * cache.normalised, dim=1, out=out)
        if (out := self._out(f"{p}.0.bias")) is not None:
            torch.sum(daffine, dim=1, out=out)

    # --- fusion head ---------------------------------------------------------------------
    def fuse(self, a: torch.Tensor, v: torch.Tensor, owner: str = "") -> tuple[torch.Tensor, tuple]:
        """fusion_head(cat(a, v)): Linear, ReLU, Linear."""
        x = torch.cat([a, v], dim=-1)
        hidden = self.linear(f"{owner}fusion_head.0", x).clamp_min_(0.0)
        return self.linear(f"{owner}fusion_head.2", hidden), (owner, x, hidden, a.shape[-1])

    def fuse_backward(
        self, cache: tuple, dlogits: torch.Tensor, need_inputs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        owner, x, hidden, split = cache
        dhidden = self.linear_backward(f"{owner}fusion_head.2", hidden, dlogits)
        dhidden = dhidden.mul_(hidden > 0)
        dx = self.linear_backward(f"{owner}fusion_head.0", x, dhidden, need_dx=need_inputs)
        return (dx[..., :split], dx[..., split:]) if dx is not None else None

    # --- prototype heads (BMSFed) --------------------------------------------------------
    def prototypes(self, name: str, z: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """PrototypeHead: minus the Euclidean distance of z to each class prototype."""
        p = self.tensors[f"{name}.prototypes"]  # (g, classes, dim)
        squared = (
            (z * z).sum(dim=-1, keepdim=True)
            - 2.0 * torch.bmm(z, p.transpose(1, 2))
            + (p * p).sum(dim=-1).unsqueeze(1)
        )
        distance = squared.clamp_min(0.0).add(1e-12).sqrt()
        return -distance, (z, p, squared, distance)

    @staticmethod
    def prototypes_backward(cache: tuple, dlogits: torch.Tensor) -> torch.Tensor:
        z, p, squared, distance = cache
        # d(-sqrt(s))/ds = -1 / (2 sqrt(s)); ds/dz = 2 (z - p_c) where s > 0 (the clamp passes)
        coeff = (-dlogits / distance) * (squared > 0)
        return coeff.sum(dim=-1, keepdim=True) * z - torch.bmm(coeff, p)


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum over samples of weight * cross-entropy, and its gradient w.r.t. the logits."""
    log_p = logits.log_softmax(dim=-1)
    nll = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    grad = log_p.exp()
    grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
    return (nll * weight).sum(dim=-1), grad.mul_(weight.unsqueeze(-1))


def row_weight(values: torch.Tensor) -> torch.Tensor:
    """A per-row number (g,) as a factor of per-sample weights (g, B)."""
    return values.unsqueeze(-1)
