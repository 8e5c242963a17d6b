"""The plan: which runs exist, which variant trains them, how they are batched into jobs."""

import pytest
import yaml

from avfl.config import deep_update, validate_config
from avfl.plan import Plan

from .conftest import REPO, tiny_config
from .helpers import BUILTIN_METHODS


def plan(**update) -> Plan:
    config = tiny_config()
    deep_update(
        config,
        {
            "experiment": {
                "seeds": [0, 1],
                "table1_rates": [0.2, 0.5],
                "figure3_rates": [0.2, 0.5, 0.8],
                "figure2_rate": 0.5,
            }
        },
    )
    deep_update(config, update)
    return Plan(validate_config(config))


def methods_trained(p: Plan, variant: str) -> set[str]:
    return {j.method for j in p.jobs if j.variant == variant}


def test_a_modalitymirror_overlay_trains_only_modalitymirror():
    p = plan(experiment={"variants": {"ce": {"methods.modalitymirror.ce_weight": 0.5}}})
    assert methods_trained(p, "ce") == {"modalitymirror"}
    (mm,) = [
        r for r in p.all_runs if r.variant == "ce" and r.rate == 0.5 and r.seed == 0 and r.fold == 1
    ]
    assert dict(mm.consumes)["multifl"].startswith(
        "results/tiny/runs/default/"
    )  # reads default's MultiFL
    assert p.changed_methods("tiny") == {"ce": ["modalitymirror"]}


def test_ablation_methods_run_at_the_table1_rates_and_stay_out_of_table1():
    p = plan(experiment={"ablation_methods": ["cmrf"],
                         "variants": {"ct": {"methods.cmrf.sma_start": 0.5}, "mm": {"methods.modalitymirror.ce_weight": 0.5}}})  # fmt: skip
    cmrf = [r for r in p.all_runs if r.method == "cmrf"]
    assert {r.rate for r in cmrf} == {0.2, 0.5} and {r.variant for r in cmrf} == {"default", "ct"}
    assert "cmrf" not in p.grid.methods and methods_trained(p, "ct") == {"cmrf"}
    assert p.changed_methods("tiny") == {"ct": ["cmrf"], "mm": ["modalitymirror"]}
    settings = __import__("json").loads(p.report_settings())
    assert settings["ablation_methods"] == ["cmrf"] and "cmrf" not in settings["methods"]
    assert any(f.endswith("ablations.md") for f in p.all_targets())
    # Without variants the ablation table is still written, for the ablation methods alone.
    alone = plan(experiment={"ablation_methods": ["cmrf"]})
    assert any(f.endswith("ablations.md") for f in alone.all_targets())
    with pytest.raises(Exception, match=r"experiment\.ablation_methods': unknown method 'nope'"):
        plan(experiment={"ablation_methods": ["nope"]})


def test_a_multifl_overlay_retrains_what_consumes_multifl():
    p = plan(
        experiment={"variants": {"head": {"methods.multifl.multimodal_audio_head_weight": 1.0}}}
    )
    assert methods_trained(p, "head") == {"multifl", "modalitymirror"}
    assert p.config_hash("tiny", "head", "modalitymirror") != p.config_hash(
        "tiny", "default", "modalitymirror"
    )


def test_a_federated_overlay_retrains_everything_and_the_reference_but_no_partition():
    p = plan(experiment={"variants": {"long": {"federated.rounds": 300}}})
    assert methods_trained(p, "long") == {*BUILTIN_METHODS, "centralised"}
    assert all("/partition/default/" in r.partition for r in p.all_runs)


def test_a_partition_overlay_has_its_own_partitions():
    p = plan(experiment={"variants": {"iid": {"partition.alpha": 100.0}}})
    assert {r.partition.split("/")[3] for r in p.all_runs} == {"default", "iid"}


def test_an_equal_budget_trains_a_shorter_phase1_without_changing_the_multifl_row():
    equal = {
        "methods.modalitymirror.phase1_rounds": 0.5,
        "methods.modalitymirror.phase2_rounds": 0.5,
    }
    p = plan(federated={"rounds": 30}, experiment={"variants": {"equal": equal}})
    derived = "equal-for-modalitymirror"
    assert methods_trained(p, "equal") == {"modalitymirror"}
    assert methods_trained(p, derived) == {"multifl"}  # phase 1's own 15-round MultiFL
    (phase1,) = {j.spec.settings["federated"]["rounds"] for j in p.jobs if j.variant == derived}
    assert phase1 == 15
    (mm,) = [r for r in p.all_runs if r.variant == "equal" and r.rate == 0.5 and r.seed == 0
             and r.fold == 1]  # fmt: skip
    assert f"/runs/{derived}/" in dict(mm.consumes)["multifl"]
    # The MultiFL row of the variant is MultiFL's own 30-round run, and derived variants are
    # planned but never reported.
    assert p.run_variant("tiny", "equal", "multifl") == "default"
    assert p.configuration.reported == ["default", "equal"]
    assert derived not in p.changed_methods("tiny")
    # The same shares on a config of another round count: the phase is half of its rounds.
    q = plan(federated={"rounds": 40}, experiment={"variants": {"equal": equal}})
    assert {j.spec.settings["federated"]["rounds"] for j in q.jobs if j.variant == derived} == {20}


def test_identical_variants_share_runs():
    p = plan(
        experiment={
            "variants": {"a": {"methods.fedprox.mu": 0.5}, "b": {"methods.fedprox.mu": 0.5}}
        }
    )
    assert methods_trained(p, "a") == {"fedprox"} and methods_trained(p, "b") == set()


def test_jobs_hold_whole_seeds_by_default_and_pack_to_runs_per_job():
    default = plan()
    multifl = [j for j in default.jobs if j.method == "multifl" and j.fold == 1]
    assert [sorted((r.seed, r.rate) for r in j.runs) for j in multifl] == [
        [(0, 0.2), (0, 0.5), (0, 0.8)], [(1, 0.2), (1, 0.5), (1, 0.8)]]  # fmt: skip
    assert len({r.dir for j in default.jobs for r in j.runs}) == sum(
        len(j.runs) for j in default.jobs
    )
    assert [
        len(j.runs)
        for j in plan(experiment={"runs_per_job": 0}).jobs
        if j.method == "multifl" and j.fold == 1
    ] == [6]
    assert [
        len(j.runs)
        for j in plan(experiment={"runs_per_job": 1}).jobs
        if j.method == "multifl" and j.fold == 1
    ] == [1] * 6
    assert [
        len(j.runs)
        for j in plan(experiment={"runs_per_job": 4}).jobs
        if j.method == "multifl" and j.fold == 1
    ] == [3, 3]


def test_gpus_are_asked_for_only_by_backbones_with_parameters():
    cpu_backbones = plan()
    assert not any(j.gpu for j in cpu_backbones.jobs) and not cpu_backbones.needs_gpu(
        "default", "audio"
    )
    paper = plan(model={"audio": {"backbone": "ssast"}, "visual": {"backbone": "resnet18"}})
    assert all(j.gpu for j in paper.jobs)
    assert not plan(model={"audio": {"backbone": "ssast"}}, federated={"device": "cpu"}).needs_gpu(
        "default"
    )


def test_reports_are_named_by_experiment():
    p = plan(experiment={"name": "mine"})
    assert p.report_dir() == "results/report/mine"
    assert "results/report/mine/table1.md" in p.all_targets()
    assert not any(t.startswith("results/report/main") for t in p.all_targets())


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["ablations.yaml"],
        ["rehearsal.yaml"],
        ["ucf101.yaml", "ablations.yaml"],
        ["cremad.yaml"],
    ],
)
def test_training_rule_names_are_unique_and_short_enough_for_cluster_group_jobs(extra):
    """A group job is named after its first five rules; its log folder must stay under 255 bytes."""
    from avfl.config import load_config
    from avfl.plan import RULE_NAME_MAX

    config = load_config([REPO / "config/config.yaml", *[REPO / "config" / f for f in extra]])
    names = [job.name for job in Plan(config).jobs]
    assert len(set(names)) == len(names)
    assert max(map(len, names)) <= RULE_NAME_MAX
    assert len("group_train_" + "_".join(sorted(names, key=len)[-5:]) + "_...") < 255


def test_the_slurm_profile_names_job_scripts_without_the_group_name():
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert "{name}" not in profile["jobname"] and "{jobid}" in profile["jobname"]


def test_jobs_are_prioritised_by_their_longest_chain():
    """Snakemake starts the job that heads the longest chain of work first: the references
    everything waits for, then BMSFed (three times a MultiFL run's cost), then MultiFL (which
    ModalityMirror waits for) ahead of jobs as costly as it that nothing waits for."""
    p = plan()
    by = {}
    for job in p.jobs:
        assert 1 <= job.priority <= 100
        by.setdefault((job.fold, job.method), job)
    for fold in {job.fold for job in p.jobs}:
        ref, bms, multi, mm = (
            by[fold, m] for m in ("centralised", "bmsfed", "multifl", "modalitymirror")
        )
        unifl = by[fold, "unifl"]
        assert ref.priority == 100
        assert bms.cost == 3 * unifl.cost and multi.cost == unifl.cost == mm.cost
        assert ref.priority > bms.priority > multi.priority > unifl.priority == mm.priority


def test_a_report_folder_of_other_datasets_is_refused_before_any_job(tmp_path):
    """An overlay that changes the datasets but keeps the experiment name would write its report
    over the other configuration's: refused, naming experiment.name; the same datasets (a
    changed setting of the same experiment) are not."""
    import json

    from avfl.errors import UserError

    mine = plan(experiment={"name": "shared"})
    folder = tmp_path / mine.report_dir()
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps(mine.report_identity()))
    mine.check_report_folder(tmp_path)
    plan(experiment={"name": "shared"}, partition={"alpha": 3.0}).check_report_folder(tmp_path)
    other = dict(
        mine.report_identity(), datasets={"synthetic": {"source": "synthetic", "source_dir": None}}
    )
    (folder / "experiment.json").write_text(json.dumps(other))
    with pytest.raises(
        UserError, match=r"holds the report of experiment 'shared' on synthetic.*experiment\.name"
    ):
        mine.check_report_folder(tmp_path)
    plan(experiment={"name": "mine"}).check_report_folder(tmp_path)  # its own folder


def test_opt_in_methods_run_only_where_named_and_read_the_features():
    assert not {"fssuavl", "fassl", "ssl_random_probe"} & {j.method for j in plan().jobs}
    p = plan(experiment={"methods": ["multifl", "fssuavl", "fassl", "ssl_random_probe"]},
             federated={"device": "auto"})  # fmt: skip
    assert p.grid.methods == ["multifl", "fssuavl", "fassl"]
    assert p.grid.references == ["centralised", "ssl_random_probe"]
    runs = {r.method: r for r in p.all_runs if r.fold == 1 and r.seed == 0}
    assert runs["fssuavl"].reference.endswith(
        "centralised/seed0/metrics.json"
    )  # the health guard's
    assert runs["fassl"].rate is None and runs["ssl_random_probe"].reference is None
    jobs = {j.method: j for j in p.jobs if j.spec.fold == 1}
    for name in ("fssuavl", "fassl", "ssl_random_probe"):
        spec = jobs[name].spec
        assert spec.embeddings is None and spec.gpu  # a trained backbone asks for a GPU under auto
        assert any(i.endswith("fbank.npy") for i in jobs[name].inputs)
    assert jobs["multifl"].spec.embeddings is not None and not jobs["multifl"].spec.gpu
    # One block configures the three: a change to it changes all their runs, and nothing else.
    changed = plan(experiment={"methods": ["multifl", "fssuavl", "fassl", "ssl_random_probe"]},
                   federated={"device": "auto"}, methods={"fssuavl": {"temperature": 0.2}})  # fmt: skip
    differ = {
        j.method
        for j, k in zip(p.jobs, changed.jobs, strict=True)
        if j.spec.config_hash != k.spec.config_hash
    }
    assert differ == {"fssuavl", "fassl", "ssl_random_probe"}
    on_cpu = plan(
        experiment={"methods": ["fssuavl"]}, methods={"fssuavl": {"federated": {"device": "cpu"}}}
    )
    assert not any(j.spec.gpu for j in on_cpu.jobs)
