"""`python -m avfl <command>`: the entry points the workflow's rules call, and the commands
people run by hand (validate, methods, table, dvc-pull).

Rules call the command line rather than `script:` files: the log shows the exact command, a
job can be rerun by hand or on a cluster node without Snakemake's objects, and the package
holds all logic. Each command parses its arguments and calls one function of the package.
Errors meant for the user (avfl.errors.UserError) print as one line and exit with 2; any
other exception is a bug and keeps its traceback in the rule's log.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from avfl.errors import UserError


def _json(text: str) -> dict:
    """A JSON object given inline or as a file path."""
    source = text
    if not text.lstrip().startswith("{"):
        source = Path(text).read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc}): {text[:80]}") from exc
    if not isinstance(value, dict):
        raise UserError(f"expected a JSON object: {text[:80]}")
    return value


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_generate(args) -> None:
    from avfl.data import synthetic

    summary = synthetic.generate(_json(args.settings), args.out, workers=args.threads)
    _log(json.dumps(summary, indent=2))


def cmd_generate_rehearsal(args) -> None:
    from avfl.data import rehearsal

    summary = rehearsal.generate_rehearsal(
        _json(args.settings),
        args.features,
        args.embeddings,
        args.audio_backbone,
        args.visual_backbone,
    )
    _log(json.dumps(summary, indent=2))


def cmd_extract(args) -> None:
    from avfl.data import extract

    rows = extract.extract_dataset(args.raw, args.out, _json(args.settings), threads=args.threads)
    summary = extract.summarise(rows)
    _log(summary)  # the rule's log
    print(f"[extract] {args.out}: {summary}")  # the terminal


def cmd_import_layout(args) -> None:
    from avfl.data import ucf101

    n_classes, n_clips = ucf101.link_layout(args.source, args.out)
    _log(f"linked {args.source}: {n_classes} classes, {n_clips} listed clips")


def cmd_import_cremad(args) -> None:
    import dataclasses

    from avfl.data import cremad

    summary = cremad.link_cremad(args.source, args.out, log=_log)
    _log(json.dumps(dataclasses.asdict(summary), indent=2, default=str))


def cmd_partition(args) -> None:
    from avfl import partition

    record = partition.write_partition(
        args.manifest, args.out, dataset=args.dataset, fold=args.fold, seed=args.seed,
        settings=_json(args.settings),
    )  # fmt: skip
    _log(json.dumps(record["stats"], indent=2))


def cmd_embed(args) -> None:
    from avfl.embed import write_embeddings

    write_embeddings(
        args.features, args.modality, args.fold, _json(args.settings), args.out, log=_log
    )


def cmd_train(args) -> None:
    from avfl.device import job_device
    from avfl.jobspec import JobSpec
    from avfl.runtime import configure_training_process
    from avfl.train import run_job

    configure_training_process()  # this process trains (runtime.py)
    job = JobSpec.from_json(
        args.job if args.job.lstrip().startswith("{") else Path(args.job).read_text()
    )
    with job_device(job.settings["federated"]["device"], job.gpu, _log) as device:
        records = run_job(job, log=_log, threads=args.threads, device=device)
    for record in records:
        test = record["test"]
        print(
            f"[train] {job.dataset} {job.variant} fold{job.fold} {job.method} r={record['rate']} "
            f"seed{record['seed']}: audio top1 {test['top1']:.4f} top5 {test['top5']:.4f} "
            f"macro-F1 {test['macro_f1']:.4f}"
            + ("" if record["health"]["ok"] else "  [health: see log]")
        )


def cmd_table(args) -> None:
    from avfl.report.tables import collect_runs, print_table

    runs = collect_runs(args.runs)
    if not runs:
        raise UserError(f"no metrics.json under {args.runs}: run the training first")
    print(print_table(runs, args.metric, args.rates), end="")


def cmd_report(args) -> None:
    from avfl.report import write_reports

    print(write_reports(args.metrics, _json(args.settings), args.out), end="")


def cmd_collect(args) -> None:
    from avfl.report.runs_table import write_runs_csv

    write_runs_csv(args.metrics, args.out)


def cmd_download_ucf101(args) -> None:
    from avfl.data.acquire import acquire_ucf101
    from avfl.data.download import remote_from_config

    sources = _json(args.sources)
    n_classes, n_clips = acquire_ucf101(
        args.downloads, args.out, remote_from_config(sources["splits"]),
        remote_from_config(sources["videos"]), log=_log,
    )  # fmt: skip
    print(f"[download] UCF101: {n_classes} classes, {n_clips} listed clips in {args.out}")


def cmd_download_activitynet(args) -> None:
    from avfl.data.activitynet import acquire_activitynet

    n_classes, n_clips, missing = acquire_activitynet(
        args.downloads, args.out, _json(args.settings), log=_log
    )
    print(
        f"[download] ActivityNet: {n_classes} classes, {n_clips} clips, {missing} labelled videos unavailable"
    )


def cmd_dvc_pull(args) -> int:
    from avfl.data.dvc_pull import dvc_pull

    return dvc_pull(args.remote, args.data_dir, args.snakemake_args, log=_log)


def cmd_validate(args) -> None:
    from avfl.config import load_config

    print(json.dumps(load_config(args.configfile), indent=2, sort_keys=True))


def cmd_doctor(args) -> int:
    from avfl.device import doctor_report

    text, ok = doctor_report()
    print(text, end="")
    return 0 if ok or not args.require_gpu else 1


def cmd_docs(args) -> int:
    from avfl import docs

    for report in args.snapshot or []:
        _log(f"snapshot of {report} in {docs.snapshot(Path(report))}")
    if args.check:
        stale = docs.stale()
        for path in stale:
            print(f"stale: {path.relative_to(docs.REPO)}")
        if stale:
            print("run `python -m avfl docs` to regenerate them")
        return 1 if stale else 0
    for path in docs.write():
        print(f"wrote {path.relative_to(docs.REPO)}")
    return 0


def cmd_methods(args) -> None:
    from avfl.methods import registry

    for spec in registry().values():
        rate = "per rate" if spec.uses_rate else "rate-free"
        consumes = f"; consumes {', '.join(spec.requires())}" if spec.requires() else ""
        print(f"{spec.name} ({spec.display}, {spec.role}, {rate}{consumes}): {spec.summary}")
        if spec.cite:
            print(f"    {spec.cite}")
        for s in spec.settings:
            print(f"    {s.name} = {json.dumps(s.default)}: {s.reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avfl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help):
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = command("generate", cmd_generate, "write the embedded synthetic dataset in UCF101 layout")
    p.add_argument("--settings", required=True, help="JSON of the dataset's `synthetic` block")
    p.add_argument("--out", required=True, help="output folder (UCF-101/ and ucfTrainTestlist/)")
    p.add_argument("--threads", type=int, default=1)

    p = command(
        "generate-rehearsal",
        cmd_generate_rehearsal,
        "write UCF101-sized frozen-mode features (no videos)",
    )
    p.add_argument("--settings", required=True, help="JSON of the dataset's `rehearsal` block")
    p.add_argument("--features", required=True, help="feature folder (manifest, norm stats)")
    p.add_argument(
        "--embeddings", required=True, help="embedding folder (fold*/audio_*.npy, visual_*.npy)"
    )
    p.add_argument("--audio-backbone", default="ssast")
    p.add_argument("--visual-backbone", default="resnet18")

    p = command("extract", cmd_extract, "middle frames + log-mel fbank of a UCF101-layout folder")
    p.add_argument("--raw", required=True, help="folder holding UCF-101/ and ucfTrainTestlist/")
    p.add_argument("--out", required=True, help="feature folder to write")
    p.add_argument("--settings", required=True, help="JSON of the dataset's `extract` block")
    p.add_argument("--threads", type=int, default=1)

    p = command(
        "import-layout", cmd_import_layout, "use an existing UCF101-layout copy (linked, validated)"
    )
    p.add_argument("--source", required=True, help="folder holding UCF-101/ and ucfTrainTestlist/")
    p.add_argument("--out", required=True, help="raw-data folder of the workflow to create")

    p = command(
        "import-cremad", cmd_import_cremad, "lay a CREMA-D copy out in UCF101 layout (actor folds)"
    )
    p.add_argument("--source", required=True, help="the CREMA-D clone (VideoFlash/, AudioWAV/)")
    p.add_argument("--out", required=True, help="raw-data folder of the workflow to create")

    p = command(
        "partition", cmd_partition, "fold, dev split, Dirichlet clients, missing-video order"
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="partition seed")
    p.add_argument("--settings", required=True, help="JSON of the `partition` block")
    p.add_argument(
        "--out", required=True, help="partition JSON (stats TSV and heatmap PNG beside it)"
    )

    p = command("embed", cmd_embed, "frozen backbone embeddings of every usable clip")
    p.add_argument("--features", required=True, help="extraction output folder")
    p.add_argument("--modality", required=True, choices=["audio", "visual"])
    p.add_argument(
        "--fold",
        type=int,
        default=None,
        help="audio: the fold whose statistics normalise the fbank",
    )
    p.add_argument(
        "--settings", required=True, help='JSON {"spec": model.<modality>, "extract", "device"}'
    )
    p.add_argument("--out", required=True, help=".npy file to write")

    p = command("train", cmd_train, "a training job: its runs' metrics.json and model.pt")
    p.add_argument(
        "--job", required=True, help="the job's JSON (inline or a file), as avfl.plan writes it"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")

    p = command(
        "table", cmd_table, "print audio accuracy by method and missing rate from run records"
    )
    p.add_argument(
        "--runs", required=True, help="folder holding run directories (e.g. results/synthetic/runs)"
    )
    p.add_argument("--metric", default="top1", choices=["top1", "top5", "macro_f1"])
    p.add_argument("--rates", nargs="*", type=float, help="rates to show (default: all found)")

    p = command(
        "collect", cmd_collect, "one CSV row per run and model, from the runs' metrics.json"
    )
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = command("report", cmd_report, "Table 1, Figures 2 and 3, the ablation table")
    p.add_argument("--metrics", nargs="+", required=True, help="the runs' metrics.json files")
    p.add_argument("--settings", required=True, help="JSON of the report settings (avfl.plan)")
    p.add_argument("--out", required=True, help="report folder")

    p = command(
        "download-ucf101", cmd_download_ucf101, "fetch, verify and lay out UCF101 (resumable)"
    )
    p.add_argument(
        "--downloads", required=True, help="folder for the archives (kept for resumption)"
    )
    p.add_argument("--out", required=True, help="raw-data folder to create (UCF101 layout)")
    p.add_argument("--sources", required=True, help='JSON {"splits": remote, "videos": remote}')

    p = command(
        "download-activitynet", cmd_download_activitynet, "annotations + videos -> UCF101 layout"
    )
    p.add_argument(
        "--downloads", required=True, help="folder for the annotations, videos and failed.tsv"
    )
    p.add_argument("--out", required=True, help="raw-data folder to create (UCF101 layout)")
    p.add_argument(
        "--settings", required=True, help="JSON of the dataset's download block plus source_dir"
    )

    p = command(
        "dvc-pull", cmd_dvc_pull, "dvc pull, then mark the pulled raw data and features up to date"
    )
    p.add_argument("--remote", default=None, help="DVC remote (default: the repository's default)")
    p.add_argument("--data-dir", default="data")
    p.add_argument(
        "snakemake_args",
        nargs="*",
        help="after --: arguments for snakemake (e.g. --configfile ...)",
    )

    p = command("validate", cmd_validate, "validate (and complete with defaults) config files")
    p.add_argument("configfile", nargs="+")

    p = command(
        "doctor",
        cmd_doctor,
        "what a GPU job would find here: torch build, driver, GPUs, slots, SLURM",
    )
    p.add_argument("--require-gpu", action="store_true",
                   help="exit 1 when GPU jobs could not run here")  # fmt: skip

    p = command(
        "docs",
        cmd_docs,
        "write the generated documentation (config reference, method pages, performance)",
    )
    p.add_argument("--check", action="store_true", help="list what is stale, write nothing")
    p.add_argument("--snapshot", nargs="+", metavar="REPORT_DIR",
                   help="first copy these reports (results/report/<experiment>) into docs/results/")  # fmt: skip

    command(
        "methods",
        cmd_methods,
        "list the registered methods, their settings and the reason for each default",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
