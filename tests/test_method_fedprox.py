"""FedProx: MultiFL with the proximal term; mu = 0 is MultiFL exactly."""

import torch

from avfl.fl.tasks import AudioTask
from avfl.methods.fedprox import Proximal
from avfl.train import run_job

from .conftest import quiet, tiny_job


def test_mu_zero_is_multifl_bit_for_bit_and_mu_changes_the_run(tiny_training, tmp_path):
    (multifl,) = run_job(tiny_job(tiny_training, tmp_path / "m", "multifl"), log=quiet)
    (zero,) = run_job(
        tiny_job(tiny_training, tmp_path / "z", "fedprox", settings={"mu": 0.0}), log=quiet
    )
    (prox,) = run_job(
        tiny_job(tiny_training, tmp_path / "p", "fedprox", settings={"mu": 1.0}), log=quiet
    )
    assert (
        zero["test"] == multifl["test"]
        and zero["dev_curve"]["fedprox"] == multifl["dev_curve"]["multifl"]
    )
    assert prox["dev_curve"]["fedprox"] != multifl["dev_curve"]["multifl"]


def test_proximal_term_and_its_gradient():
    task = Proximal(AudioTask(), mu=0.4)
    start = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    params = {
        "w": torch.tensor([2.0, 0.0], requires_grad=True),
        "b": torch.tensor([0.5], requires_grad=True),
    }
    value = task.penalty(params, start)
    torch.testing.assert_close(value, torch.tensor(0.5 * 0.4 * (1.0 + 4.0)))
    value.backward()
    torch.testing.assert_close(
        params["w"].grad, 0.4 * torch.tensor([1.0, -2.0])
    )  # mu (w - w_global)
    assert task.groups == AudioTask().groups and task != Proximal(AudioTask(), mu=0.5)
