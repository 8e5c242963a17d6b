"""FASSL: federated self-supervised learning on audio alone, FSSUAVL's single-modality
baseline (its Tables 2-3). Every client trains SimCLR on its audio views only, whatever its
video, so a run serves every video-missing rate; then the same federated audio probe.

It is FSSUAVL's run with every client audio-only (avfl/methods/fssuavl.py): the same
settings, phase names and draws, so FSSUAVL at rate 1 equals it bit for bit, and their
difference at a rate is what the frames add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avfl.methods.fssuavl import pretrain_and_probe
from avfl.methods.spec import method

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext


@method(
    name="fassl",
    display="FASSL",
    colour="#8C8C8C",
    uses_rate=False,
    cite="FSSUAVL's audio-only federated SSL baseline (Rehman et al.)",
    settings_of="fssuavl",
    opt_in=True,
    raw_inputs=True,
    cost=40.0,
)
def fassl(ctx: RunContext) -> MethodResult:
    """Federated SimCLR of the backbone on audio views only, then the audio linear probe."""
    return pretrain_and_probe(ctx, use_frames=False)
