"""The random-init probe: FSSUAVL's and FASSL's audio probe on the backbone as initialised,
never pre-trained. Their reference row from below: what pre-training adds is their gap to it.

The same model initialisation, probe phase and draws as theirs (avfl/methods/fssuavl.py), so
the only difference is the pre-training. Rate-free: no client uses its frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avfl.methods.fssuavl import pretrain_and_probe
from avfl.methods.spec import method

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext


@method(
    name="ssl_random_probe",
    display="Random-init probe",
    colour="#B0B0B0",
    uses_rate=False,
    role="reference",
    cite="the usual lower reference of self-supervised learning: a linear probe on a random backbone",
    settings_of="fssuavl",
    opt_in=True,
    raw_inputs=True,
    cost=3.0,
)
def ssl_random_probe(ctx: RunContext) -> MethodResult:
    """The federated audio probe on the randomly initialised backbone."""
    return pretrain_and_probe(ctx, use_frames=False, pretrain=False)
