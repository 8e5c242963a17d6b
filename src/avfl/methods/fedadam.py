"""FedAdam (Reddi et al., Adaptive federated optimization, ICLR 2021) on the modality-aware
setting of MultiFL.

Clients train as in MultiFL; the server treats the modality-aware average minus the global
model as a pseudo-gradient and applies Adam to it (Reddi et al.'s Algorithm 2, no bias
correction): m = b1 m + (1 - b1) D, v = b2 v + (1 - b2) D^2, x = x + lr m / (sqrt(v) + tau).
Only parameters that some sampled client trained take a step (the others keep their value
and their moments), so audio-only rounds do not move the visual model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from avfl.methods.multifl import HEAD_WEIGHT
from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    import torch

    from avfl.fl.types import ClientUpdate
    from avfl.methods.context import MethodResult, RunContext


class AdamServer:
    """Modality-aware FedAvg for the average, then a server-side Adam step on the difference."""

    def __init__(self, phase, context, settings: Mapping[str, Any]):
        from avfl.fl.server import FedAvgServer

        self.base = FedAvgServer(phase, context)
        self.lr, self.tau = settings["server_lr"], settings["tau"]
        self.b1, self.b2 = settings["beta1"], settings["beta2"]
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def start(self, state):
        return self.base.start(state)

    def select(self, rnd, rng, eligible, k):
        return self.base.select(rnd, rng, eligible, k)

    def assign_tasks(self, rnd, clients, state):
        return self.base.assign_tasks(rnd, clients, state)

    def aggregate(
        self, rnd: int, state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        import torch

        average = self.base.aggregate(rnd, state, updates)
        names = sorted({n for u in updates for n, v in u.state.items() if v.is_floating_point()})
        if not names:
            return dict(average)
        # In float64, the moments updated in place; multi-tensor ops, one launch per step of
        # the update on a GPU (on the CPU they run the per-tensor kernels: the same numbers).
        xs = [state[n].double() for n in names]
        deltas = [average[n].double() for n in names]
        torch._foreach_sub_(deltas, xs)
        # A resumed run's moments come from a checkpoint loaded on the CPU.
        m = [self._moment(self.m, n, d) for n, d in zip(names, deltas, strict=True)]
        v = [self._moment(self.v, n, d) for n, d in zip(names, deltas, strict=True)]
        torch._foreach_mul_(m, self.b1)
        torch._foreach_add_(m, deltas, alpha=1 - self.b1)
        torch._foreach_mul_(v, self.b2)
        torch._foreach_addcmul_(v, deltas, deltas, value=1 - self.b2)
        denominators = torch._foreach_sqrt(v)
        torch._foreach_add_(denominators, self.tau)
        steps = torch._foreach_addcdiv(xs, m, denominators, value=self.lr)
        new = dict(average)
        for name, step in zip(names, steps, strict=True):
            new[name] = step.to(state[name].dtype)
        return new

    @staticmethod
    def _moment(moments: dict, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The moment of `name` on `delta`'s device, zero on its first round."""
        import torch

        moment = moments.get(name)
        moment = torch.zeros_like(delta) if moment is None else moment.to(delta.device)
        moments[name] = moment
        return moment

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.m, self.v = dict(saved["m"]), dict(saved["v"])


@method(
    name="fedadam",
    display="FedAdam",
    colour="#937860",
    cite="Reddi et al., Adaptive federated optimization, ICLR 2021",
    settings=[
        setting("server_lr", 0.01, "Reddi et al. tune the server rate on a log grid; 10^-2 is a typical best for FedAdam there", type="number", exclusiveMinimum=0),
        setting("beta1", 0.9, "first-moment decay, the value Reddi et al. use throughout", type="number", minimum=0, exclusiveMaximum=1),
        setting("beta2", 0.99, "second-moment decay, the value Reddi et al. use throughout", type="number", minimum=0, exclusiveMaximum=1),
        setting("tau", 1.0e-3, "Reddi et al.'s adaptivity (epsilon) default", type="number", exclusiveMinimum=0),
        HEAD_WEIGHT,
    ],
)  # fmt: skip
def fedadam(ctx: RunContext) -> MethodResult:
    """MultiFL's clients with a server-side Adam optimizer on the averaged update."""
    from avfl.methods.multifl import modality_aware_phase, modality_aware_result

    settings = ctx.method_settings
    phase = modality_aware_phase(
        ctx, settings["multimodal_audio_head_weight"],
        server=lambda p, c: AdamServer(p, c, settings),
    )  # fmt: skip
    return modality_aware_result(ctx, "fedadam", ctx.run(phase))
