"""FedProx (Li et al., Federated optimization in heterogeneous networks, MLSys 2020) on the
modality-aware setting of MultiFL.

Every client adds the proximal term (mu/2) ||w - w_global||^2 to its local objective, over
the parameters it trains, which limits client drift under non-IID data. Clients, tasks,
aggregation and the reported audio model are MultiFL's, so the difference between the two
rows is the proximal term alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avfl.methods.multifl import HEAD_WEIGHT
from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    import torch

    from avfl.methods.context import MethodResult, RunContext


@dataclass(frozen=True)
class Proximal:
    """A task plus FedProx's proximal term on the parameters it trains."""

    task: Any
    mu: float

    @property
    def name(self) -> str:
        return f"{self.task.name}+prox"

    @property
    def groups(self) -> tuple[str, ...]:
        return self.task.groups

    @property
    def reads(self) -> tuple[str, ...]:
        return self.task.reads

    def sample_loss(self, model, audio, visual, labels) -> torch.Tensor:
        return self.task.sample_loss(model, audio, visual, labels)

    def penalty(
        self, params: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        return 0.5 * self.mu * sum(((params[n] - start[n]) ** 2).sum() for n in params)

    @property
    def stacked(self):
        """The wrapped task's written-out step plus the proximal term's value and gradient
        (mu (w - w_start)) on every trained tensor (fl/stacked.py); None if it has none."""
        inner = getattr(self.task, "stacked", None)
        if inner is None:
            return None

        def step(rows, batch) -> torch.Tensor:
            import torch

            loss = inner(rows, batch)
            names = sorted(rows.trained)
            for name in names:
                if name not in rows.written:  # the task's loss did not reach it
                    rows.grads[name].zero_()
                    rows.written.add(name)
            if rows.step == 0:  # the tensors are their start: no drift, no term, no gradient
                return loss
            params = [rows.tensors[n] for n in names]
            drifts = torch._foreach_sub(params, [rows.start[n] for n in names])
            torch._foreach_add_([rows.grads[n] for n in names], drifts, alpha=self.mu)
            squares = torch.stack(
                [torch.linalg.vecdot(d.flatten(1), d.flatten(1)) for d in drifts]
            ).sum(dim=0)
            return loss + 0.5 * self.mu * squares

        return step


@method(
    name="fedprox",
    display="FedProx",
    colour="#8172B3",
    cite="Li et al., Federated optimization in heterogeneous networks, MLSys 2020",
    settings=[
        setting(
            "mu", 0.01,
            "the middle of Li et al.'s grid {0.001, 0.01, 0.1, 1} (their best value varies by "
            "dataset); the ablation config varies it",
            type="number", minimum=0,
        ),
        HEAD_WEIGHT,
    ],
)  # fmt: skip
def fedprox(ctx: RunContext) -> MethodResult:
    """MultiFL with the proximal term on every client's local objective."""
    from avfl.methods.multifl import modality_aware_phase, modality_aware_result

    mu = ctx.method_settings["mu"]
    phase = modality_aware_phase(
        ctx, ctx.method_settings["multimodal_audio_head_weight"], wrap=lambda t: Proximal(t, mu)
    )
    return modality_aware_result(ctx, "fedprox", ctx.run(phase))
