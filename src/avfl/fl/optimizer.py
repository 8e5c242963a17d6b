"""The local optimizer over stacked rows, laid out so that a row's update does not depend on
its neighbours.

Rows of local training are stacked into one tensor per parameter, and PyTorch's fused
Adam/SGD kernels compute a tensor's body with vector instructions and its last partial
vector with scalar code, which need not round alike. A row whose elements fell in the tail
in one batch and in the body in another would get different updates, so a run's numbers
would depend on the runs it is batched with. Here each parameter lives in a flat buffer of
shape (rows, padded) whose row length is a multiple of `ALIGN` elements: every row starts at
the same vector lane and no tensor has a tail, so every element takes the same vector path
whatever the batch. Padding elements have zero gradient and stay zero. Adam calls PyTorch's
fused kernel (one pass per step) and SGD its multi-tensor ops directly, with the arguments
`torch.optim.Adam(fused=True)` and `torch.optim.SGD(foreach=True)` pass them (the same
numbers; tested against them): constructing a `torch.optim` optimizer imports TorchDynamo,
about 2 s of every training process's start-up, and its per-step bookkeeping costs more than
the kernels on small models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from avfl.fl.types import TrainSettings

ALIGN = 64  # elements: a multiple of every vector width and unroll of the fused kernels
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as every peer implementation uses
ADAM_EPS = 1e-8


class RowOptimizer:
    """Owns the stacked parameters: `params[name]` is a (rows, ...) view of a padded buffer."""

    def __init__(
        self, starts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str], cfg: TrainSettings
    ):
        """`starts[i][name]`: row i's starting value of each parameter `name` (copied in)."""
        self.buffers: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.params: dict[str, torch.Tensor] = {}
        rows = len(starts)
        for name in names:
            first = starts[0][name]
            n = first.numel()
            padded = math.ceil(max(n, 1) / ALIGN) * ALIGN
            buffer = torch.zeros(rows, padded, dtype=first.dtype, device=first.device)
            view = buffer[:, :n].view(rows, *first.shape)
            view.copy_(torch.stack([start[name] for start in starts]))
            self.buffers[name] = buffer
            if padded != n:  # gradients of an aligned tensor are passed to the kernel as they come
                self.grads[name] = torch.zeros_like(buffer)
            self.params[name] = view
        self.cfg = cfg
        self.adam = cfg.optimizer == "adam"
        # The kernels take tensors of one device and dtype per call (torch.optim groups so too).
        by_kind: dict[tuple[torch.device, torch.dtype], list[str]] = {}
        for name, buffer in self.buffers.items():
            by_kind.setdefault((buffer.device, buffer.dtype), []).append(name)
        self.groups: list[list[str]] = list(by_kind.values())
        if self.adam:  # state as torch.optim.Adam(fused=True) keeps it: float32 steps on the device
            self.exp_avgs = [[torch.zeros_like(self.buffers[n]) for n in g] for g in self.groups]
            self.exp_avg_sqs = [[torch.zeros_like(self.buffers[n]) for n in g] for g in self.groups]
            self.steps = [
                [torch.zeros((), dtype=torch.float32, device=self.buffers[n].device) for n in g]
                for g in self.groups
            ]

    def step(self, grads: Mapping[str, torch.Tensor], active: int | None = None) -> None:
        """Update the first `active` rows (all by default) with `grads` of shape (active, ...).

        The caller keeps the rows still training first, so the active rows are a contiguous
        prefix of every buffer and the finished ones are left as they are. The Adam step count
        is shared: every active row has taken the same number of steps.
        """
        rows = active if active is not None else next(iter(self.buffers.values())).shape[0]
        flat: dict[str, torch.Tensor] = {}
        for name in self.buffers:
            n = self.params[name][0].numel()
            grad = grads[name].reshape(rows, n)
            if name in self.grads:  # a padded tensor: its gradient goes into the padded layout
                self.grads[name][:rows, :n].copy_(grad)
                grad = self.grads[name][:rows]
            flat[name] = grad.contiguous()
        lr, weight_decay = self.cfg.lr, self.cfg.weight_decay
        with torch.no_grad():
            for k, names in enumerate(self.groups):
                buffers = [self.buffers[n][:rows] for n in names]
                grad_buffers = [flat[n] for n in names]
                if self.adam:
                    torch._foreach_add_(self.steps[k], 1)
                    torch._fused_adam_(
                        buffers, grad_buffers, [m[:rows] for m in self.exp_avgs[k]],
                        [v[:rows] for v in self.exp_avg_sqs[k]], [],
                        self.steps[k], amsgrad=False, lr=lr, beta1=ADAM_BETAS[0],
                        beta2=ADAM_BETAS[1], weight_decay=weight_decay, eps=ADAM_EPS,
                        maximize=False, grad_scale=None, found_inf=None,
                    )  # fmt: skip
                else:
                    update = (
                        torch._foreach_add(grad_buffers, buffers, alpha=weight_decay)
                        if weight_decay != 0
                        else grad_buffers
                    )
                    torch._foreach_add_(buffers, update, alpha=-lr)
