"""The local optimizer over stacked rows, laid out so that a row's update does not depend on
its neighbours.

Rows of local training are stacked, and PyTorch's fused Adam/SGD kernels compute a tensor's
body with vector instructions and its last partial vector with scalar code, which need not
round alike. A row whose elements fell in the tail in one batch and in the body in another
would get different updates, so a run's numbers would depend on the runs it is batched with.
Here every parameter of every row occupies a block whose length is a multiple of `ALIGN`
elements: every block starts at the same vector lane and no tensor has a tail, so every
element takes the same vector path whatever the batch. Padding elements have zero gradient
and stay zero.

The parameters, gradients and Adam moments are one flat buffer each (per device and dtype),
parameter after parameter, each parameter's rows contiguous: `params[name]` and
`grad_views[name]` are (rows, ...) views of them. A step of every row is then one kernel call over one tensor; a step of a prefix
of the rows (the others have finished their local steps) calls it per parameter on the
prefix of each block. Both do the same arithmetic on every element (tested).

Adam calls PyTorch's fused kernel (one pass per step) and SGD (with momentum) its multi-tensor
ops directly, with the arguments `torch.optim.Adam(fused=True)` and `torch.optim.SGD(foreach=True)`
pass them, and gradient clipping computes `torch.nn.utils.clip_grad_norm_`'s norms per row (the
same numbers; tested against them): constructing a `torch.optim` optimizer imports
TorchDynamo, about 2 s of every training process's start-up, and its per-step bookkeeping
costs more than the kernels on small models.
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
    """Owns the stacked parameters of the rows: `params[name]` is a (rows, ...) view."""

    def __init__(
        self, starts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str], cfg: TrainSettings
    ):
        """`starts[i][name]`: row i's starting value of each parameter `name` (copied in)."""
        self.cfg = cfg
        self.adam = cfg.optimizer == "adam"
        self.momentum = 0.0 if self.adam else cfg.momentum
        self.names = list(names)
        self.rows = rows = len(starts)
        self.shapes = {name: tuple(starts[0][name].shape) for name in self.names}
        # The kernels take tensors of one device and dtype per call (torch.optim groups so too).
        kinds: dict[tuple[torch.device, torch.dtype], int] = {}
        lengths: list[int] = []
        self.blocks: dict[str, tuple[int, int, int]] = {}  # name -> kind, offset, padded
        for name in self.names:
            first = starts[0][name]
            kind = kinds.setdefault((first.device, first.dtype), len(kinds))
            if kind == len(lengths):
                lengths.append(0)
            padded = math.ceil(max(first.numel(), 1) / ALIGN) * ALIGN
            self.blocks[name] = (kind, lengths[kind], padded)
            lengths[kind] += rows * padded

        def flat(zero: bool) -> list[torch.Tensor]:
            make = torch.zeros if zero else torch.empty
            return [
                make(n, dtype=dtype, device=device)
                for (device, dtype), n in zip(kinds, lengths, strict=True)
            ]

        # Parameters and gradients are written whole before they are read: only their padding
        # is zeroed (below). The moments start at zero; SGD's momentum buffers take the first
        # step's gradients whole (torch.optim.SGD clones them), then accumulate.
        self.flat_params, self.flat_grads = flat(zero=False), flat(zero=False)
        self.exp_avgs = flat(zero=True) if self.adam or self.momentum else []
        self.exp_avg_sqs = flat(zero=True) if self.adam else []
        self.steps = [torch.zeros((), dtype=torch.float32, device=device) for device, _ in kinds]
        self.sgd_steps = 0  # on the host: whether SGD's momentum buffers hold a gradient yet
        self.params: dict[str, torch.Tensor] = {}
        self.grad_views: dict[str, torch.Tensor] = {}
        for name in self.names:
            shape = self.shapes[name]
            n = math.prod(shape)
            for buffers in (self.flat_params, self.flat_grads):
                self._block(buffers, name, rows)[:, n:].zero_()
            self.params[name] = self._block(self.flat_params, name, rows)[:, :n].view(rows, *shape)
            self.grad_views[name] = self._block(self.flat_grads, name, rows)[:, :n].view(
                rows, *shape
            )
            values = [start[name] for start in starts]
            if self.params[name].is_contiguous():
                torch.stack(values, out=self.params[name])
            else:
                self.params[name].copy_(torch.stack(values))

    def _block(self, flat: list[torch.Tensor], name: str, active: int) -> torch.Tensor:
        """The (active, padded) prefix of parameter `name`'s block in one of the flat buffers."""
        kind, offset, padded = self.blocks[name]
        return flat[kind][offset : offset + self.rows * padded].view(self.rows, padded)[:active]

    def padded(self, name: str) -> torch.Tensor:
        """(rows, padded) view of a parameter with its padding."""
        return self._block(self.flat_params, name, self.rows)

    def row_state(self, row: int) -> dict[str, torch.Tensor]:
        """Row `row`'s parameters: views of the buffer, which outlives the optimizer as long as
        they are held (nothing writes to it once the rows are trained)."""
        return {n: v[row] for n, v in self.params.items()}

    def step(
        self, grads: Mapping[str, torch.Tensor] | None = None, active: int | None = None
    ) -> None:
        """Update the first `active` rows (all by default); the others are left as they are.

        `grads[name]` of shape (active, ...), or None: the gradients are already in
        `grad_views` (the written-out kernels of fl/stacked.py put them there). The caller
        keeps the rows still training first, so the active rows are a prefix of every block.
        The Adam step count is shared: every active row has taken the same number of steps.
        """
        active = self.rows if active is None else active
        kinds = range(len(self.flat_params))
        clipping = self.cfg.grad_clip_norm is not None
        if clipping and grads is not None:  # the norms are taken over the gradient buffers
            for name in self.names:
                self.grad_views[name][:active].copy_(
                    grads[name].reshape(self.grad_views[name][:active].shape)
                )
            grads = None
        if clipping:
            self.clip(active)
        if grads is None and active == self.rows:  # every row: one tensor per kind
            self._update(kinds, [[t] for t in self.flat_params], [[t] for t in self.flat_grads],
                         [[t] for t in self.exp_avgs], [[t] for t in self.exp_avg_sqs])  # fmt: skip
            return
        params: list[list[torch.Tensor]] = [[] for _ in kinds]
        grad_blocks: list[list[torch.Tensor]] = [[] for _ in kinds]
        moments: list[list[torch.Tensor]] = [[] for _ in kinds]
        squares: list[list[torch.Tensor]] = [[] for _ in kinds]
        for name in self.names:
            kind, _, padded = self.blocks[name]
            n = math.prod(self.shapes[name])
            grad = self._block(self.flat_grads, name, active)
            if grads is not None:
                given = grads[name].reshape(active, n)
                if padded == n:  # an aligned gradient goes to the kernel as it comes
                    grad = given.contiguous()
                else:
                    grad[:, :n].copy_(given)
            params[kind].append(self._block(self.flat_params, name, active))
            grad_blocks[kind].append(grad)
            if self.exp_avgs:
                moments[kind].append(self._block(self.exp_avgs, name, active))
            if self.adam:
                squares[kind].append(self._block(self.exp_avg_sqs, name, active))
        self._update(kinds, params, grad_blocks, moments, squares)

    def clip(self, active: int) -> None:
        """Scale each of the first `active` rows' gradients to a global L2 norm of at most
        `grad_clip_norm`, as `torch.nn.utils.clip_grad_norm_` does for one model: the norm of
        the per-parameter norms, and the factor min(max_norm / (norm + 1e-6), 1)."""
        max_norm = float(self.cfg.grad_clip_norm)
        views = [self.grad_views[name][:active] for name in self.names]
        # Every row's per-parameter norms in one call, row after row (as each row's own call).
        norms = torch._foreach_norm([v[row] for row in range(active) for v in views], 2.0)
        per_row = len(views)
        totals = torch.stack([
            torch.linalg.vector_norm(torch.stack(norms[i * per_row : (i + 1) * per_row]), 2.0)
            for i in range(active)
        ])  # fmt: skip
        coef = torch.clamp(max_norm / (totals + 1e-6), max=1.0)
        for name in self.names:
            block = self._block(self.flat_grads, name, active)
            block.mul_(coef.view(active, 1).to(block.dtype))

    def _update(self, kinds, params, grads, moments, squares) -> None:
        lr, weight_decay = self.cfg.lr, self.cfg.weight_decay
        first = bool(self.momentum) and self.sgd_steps == 0
        with torch.no_grad():
            for k in kinds:
                if self.adam:
                    self.steps[k].add_(1)
                    torch._fused_adam_(
                        params[k], grads[k], moments[k], squares[k], [],
                        [self.steps[k]] * len(params[k]), amsgrad=False, lr=lr,
                        beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], weight_decay=weight_decay,
                        eps=ADAM_EPS, maximize=False, grad_scale=None, found_inf=None,
                    )  # fmt: skip
                else:
                    update = (
                        torch._foreach_add(grads[k], params[k], alpha=weight_decay)
                        if weight_decay != 0
                        else grads[k]
                    )
                    if self.momentum:  # torch.optim.SGD: buf = g at the first step, then
                        if first:  # buf = momentum * buf + g; the step follows buf
                            torch._foreach_copy_(moments[k], update)
                        else:
                            torch._foreach_mul_(moments[k], self.momentum)
                            torch._foreach_add_(moments[k], update, alpha=1.0)
                        update = moments[k]
                    torch._foreach_add_(params[k], update, alpha=-lr)
        if not self.adam:
            self.sgd_steps += 1
