"""FedAdam: a server-side Adam step on the modality-aware average (Reddi et al., Algorithm 2)."""

import contextlib

import torch

from avfl.fl.tasks import AudioTask
from avfl.fl.types import ClientUpdate
from avfl.methods.fedadam import AdamServer
from avfl.train import run_job

from .conftest import quiet, tiny_job

SETTINGS = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


def test_server_step_matches_the_formula_and_skips_untrained_parameters():
    server = AdamServer(None, None, SETTINGS)
    state = {"audio_head.w": torch.tensor([1.0, 1.0]), "visual_head.w": torch.tensor([5.0])}
    x = state["audio_head.w"].double()
    m = v = torch.zeros(2, dtype=torch.float64)
    for target in ([2.0, 0.0], [1.5, 0.5]):
        update = ClientUpdate(0, AudioTask(), {"audio_head.w": torch.tensor(target)}, 3.0)
        state = server.aggregate(0, state, [update])
        delta = torch.tensor(target, dtype=torch.float64) - x
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta * delta
        x = x + 0.1 * m / (v.sqrt() + 1e-3)
        torch.testing.assert_close(state["audio_head.w"], x.float())
    assert state["visual_head.w"].item() == 5.0 and "visual_head.w" not in server.state_dict()["m"]


def test_fedadam_runs_and_resumes_with_its_moments(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    job = tiny_job(tiny_training, tmp_path / "a", "fedadam", federated={"checkpoint_every": 3})
    (whole,) = run_job(job, log=quiet)
    interrupted = tiny_job(
        tiny_training, tmp_path / "b", "fedadam", federated={"checkpoint_every": 3}
    )
    with contextlib.suppress(Interrupted):
        run_job(interrupted, log=quiet, stop_after=7)
    (resumed,) = run_job(interrupted, log=quiet)
    assert (
        resumed["resumed_from"]
        and resumed["test"] == whole["test"]
        and resumed["dev_curve"] == whole["dev_curve"]
    )
