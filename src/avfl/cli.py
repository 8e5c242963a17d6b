"""Command-line entry points called by the workflow's rules (`python -m avfl <command>`).

Each command takes the settings of its own stage as JSON (the rule's `params:`), so a
rule reruns exactly when the settings it depends on change.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _settings(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SystemExit("--settings must be a JSON object")
    return value


def cmd_generate(args: argparse.Namespace) -> int:
    from avfl.data import synthetic

    summary = synthetic.generate(_settings(args.settings), args.out, workers=args.threads)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from avfl.data import extract

    rows = extract.extract_dataset(
        args.raw, args.out, _settings(args.settings), threads=args.threads
    )
    summary = extract.summarise(rows)
    print(summary, file=sys.stderr)  # the rule's log
    print(f"[extract] {args.out}: {summary}")  # the terminal
    return 0


def cmd_import_layout(args: argparse.Namespace) -> int:
    from avfl.data import ucf101

    try:
        n_classes, n_clips = ucf101.link_layout(args.source, args.out)
    except ucf101.LayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"linked {args.source}: {n_classes} classes, {n_clips} listed clips", file=sys.stderr)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    import numpy as np

    from avfl import partition
    from avfl.data.manifest import read_manifest
    from avfl.records import write_json
    from avfl.report.partition_plot import plot_label_heatmap

    rows = read_manifest(args.manifest)
    settings = _settings(args.settings)
    try:
        record = partition.build_partition(
            rows, dataset=args.dataset, fold=args.fold, seed=args.seed, settings=settings
        )
    except partition.PartitionError as exc:
        print(f"error: {args.dataset} fold {args.fold} seed {args.seed}: {exc}", file=sys.stderr)
        return 2
    stats = partition.partition_stats(record, rows)
    record["stats"] = partition.summarise_stats(stats)
    write_json(args.out, record)
    _write_tsv(args.stats, stats)
    client_labels, n_classes = partition.partition_labels(record, rows)
    counts = np.stack([np.bincount(labels, minlength=n_classes) for labels in client_labels])
    title = (
        f"{args.dataset}, fold {args.fold}, seed {args.seed}: Dirichlet alpha={settings['alpha']}"
    )
    plot_label_heatmap(counts, record["classes"], title, args.heatmap)
    print(json.dumps(record["stats"], indent=2), file=sys.stderr)
    return 0


def _write_tsv(path: str, rows: list[dict]) -> None:
    with open(path, "w") as handle:
        handle.write("\t".join(rows[0]) + "\n")
        for row in rows:
            handle.write("\t".join(str(v) for v in row.values()) + "\n")


def cmd_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from avfl.embed import compute_embeddings
    from avfl.gpu import slot_for
    from avfl.models.weights import WeightsError
    from avfl.train import choose_device

    settings = _settings(args.settings)
    torch.manual_seed(0)
    try:
        with slot_for(settings["device"]):
            device = choose_device(settings["device"], lambda m: print(m, file=sys.stderr))
            emb = compute_embeddings(
                Path(args.features),
                args.modality,
                settings["spec"],
                settings["extract"],
                args.fold,
                device,
            )
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    np.save(args.out, emb)
    print(f"{args.modality} embeddings {emb.shape} on {device}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from avfl.models.weights import WeightsError
    from avfl.train import RunSpec, run

    torch.set_num_threads(args.threads)
    spec = RunSpec(
        dataset=args.dataset,
        fold=args.fold,
        method=args.method,
        rate=args.rate,
        seed=args.seed,
        partition=Path(args.partition),
        features=Path(args.features),
        out=Path(args.out),
        settings=_settings(args.settings),
        embeddings=(Path(args.audio_embeddings), Path(args.visual_embeddings))
        if args.audio_embeddings
        else None,
        phase1=Path(args.phase1) if args.phase1 else None,
    )
    from avfl.gpu import slot_for

    try:
        with slot_for(spec.settings["federated"]["device"]) as gpu:
            if gpu is not None:
                print(f"GPU slot: CUDA_VISIBLE_DEVICES={gpu}", file=sys.stderr)
            record = run(spec, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = record["test"]
    print(
        f"[train] {args.dataset} fold{args.fold} {args.method} r={record['rate']} seed{args.seed}: "
        f"audio top1 {test['top1']:.4f} top5 {test['top5']:.4f} macro-F1 {test['macro_f1']:.4f}"
    )
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from avfl.report.tables import collect_runs, table1_markdown, table1_rows

    runs = collect_runs(args.runs)
    if not runs:
        print(f"error: no metrics.json under {args.runs}: run the training first", file=sys.stderr)
        return 2
    found = {r["rate"] for r in runs if r["rate"] is not None}
    rates = sorted({float(r) for r in args.rates} if args.rates else found)
    datasets = sorted({r["dataset"] for r in runs})
    by_dataset = {d: [r for r in runs if r["dataset"] == d] for d in datasets}
    methods = sorted({r["method"] for r in runs})
    print(
        table1_markdown(
            table1_rows(by_dataset, dict.fromkeys(datasets, args.metric), rates, methods), rates
        ),
        end="",
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avfl.report import figures, tables

    settings = _settings(args.settings)
    runs = [json.loads(Path(p).read_text()) for p in sorted(args.metrics)]
    by_dataset = {name: [r for r in runs if r["dataset"] == name] for name in settings["datasets"]}
    metrics = settings["datasets"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = tables.table1_rows(by_dataset, metrics, settings["table1_rates"], settings["methods"])
    (out / "table1.csv").write_text(tables.table1_csv(rows))
    (out / "table1.md").write_text(tables.table1_markdown(rows, settings["table1_rates"]))
    (out / "table1.tex").write_text(tables.table1_latex(rows, settings["table1_rates"]))
    figures.figure2(
        by_dataset,
        settings["figure2_rate"],
        [out / f"fig2_label_f1.{ext}" for ext in ("pdf", "svg", "png")],
    )
    fig3_data = {name: runs for name, runs in by_dataset.items() if settings["figure3_rates"]}
    figures.figure3(fig3_data, metrics, settings["figure3_rates"], settings["methods"],
                    [out / f"fig3_missing_rate.{ext}" for ext in ("pdf", "svg", "png")])  # fmt: skip
    print((out / "table1.md").read_text())
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    columns = ["dataset", "fold", "method", "rate", "seed", "top1", "top5", "macro_f1", "n_test", "device",
               "wall_time_s", "peak_memory_mb", "config_hash", "path"]  # fmt: skip
    lines = [",".join(columns)]
    for path in sorted(args.metrics):
        r = json.loads(Path(path).read_text())
        t = r["test"]
        values = [r["dataset"], r["fold"], r["method"], "" if r["rate"] is None else r["rate"], r["seed"], t["top1"],
                  t["top5"], t["macro_f1"], t["n"], r["device"].split(" ")[0], r["wall_time_s"], r["peak_memory_mb"],
                  r["config_hash"], path]  # fmt: skip
        lines.append(",".join(str(v) for v in values))
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


def cmd_download_ucf101(args: argparse.Namespace) -> int:
    from avfl.data.acquire import acquire_ucf101
    from avfl.data.download import DownloadError, UnsafeArchiveError, remote_from_config

    sources = _settings(args.sources)
    try:
        n_classes, n_clips = acquire_ucf101(
            args.downloads, args.out, remote_from_config(sources["splits"]), remote_from_config(sources["videos"]),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )  # fmt: skip
    except (DownloadError, UnsafeArchiveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[download] UCF101: {n_classes} classes, {n_clips} listed clips in {args.out}")
    return 0


def cmd_dvc_pull(args: argparse.Namespace) -> int:
    """`dvc pull`, then mark the pulled outputs up to date for Snakemake.

    DVC does not keep file times: after a pull, a raw-data folder can look newer than the
    features made from it, and Snakemake would extract again. Touching the pulled targets
    through Snakemake (`--touch`, in DAG order) restores a consistent order.
    """
    import subprocess
    from pathlib import Path

    from avfl.data.extract import OUTPUT_FILES

    tools = Path(sys.executable).parent
    dvc = str(tools / "dvc") if (tools / "dvc").exists() else "dvc"
    snakemake = str(tools / "snakemake") if (tools / "snakemake").exists() else "snakemake"
    pull = subprocess.run([dvc, "pull", *(["-r", args.remote] if args.remote else [])])
    if pull.returncode != 0:
        print("error: dvc pull failed (see above); nothing was touched", file=sys.stderr)
        return pull.returncode
    datasets = sorted(
        p.name.removesuffix(".dvc") for p in Path(args.data_dir, "features").glob("*.dvc")
    )
    if not datasets:
        print(
            f"no {args.data_dir}/features/*.dvc files: nothing to mark up to date", file=sys.stderr
        )
        return 0
    targets = [f"{args.data_dir}/features/{d}/{name}" for d in datasets for name in OUTPUT_FILES]
    touch = subprocess.run([snakemake, "--touch", "--cores", "1", *targets, *args.snakemake_args])
    if touch.returncode == 0:
        print(f"pulled and marked up to date: {', '.join(datasets)}", file=sys.stderr)
    return touch.returncode


def cmd_download_activitynet(args: argparse.Namespace) -> int:
    from avfl.data.activitynet import acquire_activitynet
    from avfl.data.download import DownloadError

    try:
        n_classes, n_clips, missing = acquire_activitynet(
            args.downloads,
            args.out,
            _settings(args.settings),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except (DownloadError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"[download] ActivityNet: {n_classes} classes, {n_clips} clips, {missing} labelled videos unavailable"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from avfl.config import ConfigError, load_config

    try:
        config = load_config(args.configfile)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(config, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write the embedded synthetic dataset in UCF101 layout")
    p.add_argument(
        "--settings", required=True, help="JSON of the dataset's `synthetic` config block"
    )
    p.add_argument(
        "--out", required=True, help="output folder (UCF-101/ and ucfTrainTestlist/ inside)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("extract", help="middle frames + log-mel fbank of a UCF101-layout folder")
    p.add_argument("--raw", required=True, help="folder holding UCF-101/ and ucfTrainTestlist/")
    p.add_argument("--out", required=True, help="feature folder to write")
    p.add_argument("--settings", required=True, help="JSON of the dataset's `extract` config block")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "import-layout", help="use an existing UCF101-layout copy (symlinked, validated)"
    )
    p.add_argument("--source", required=True, help="folder holding UCF-101/ and ucfTrainTestlist/")
    p.add_argument("--out", required=True, help="raw-data folder of the workflow to create")
    p.set_defaults(func=cmd_import_layout)

    p = sub.add_parser("partition", help="fold, dev split, Dirichlet clients, missing-video order")
    p.add_argument("--manifest", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="partition seed")
    p.add_argument("--settings", required=True, help="JSON of the `partition` config block")
    p.add_argument("--out", required=True, help="partition JSON")
    p.add_argument("--stats", required=True, help="per-client statistics (TSV)")
    p.add_argument("--heatmap", required=True, help="label-distribution heatmap (PNG)")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("embed", help="frozen backbone embeddings of every usable clip")
    p.add_argument("--features", required=True, help="extraction output folder")
    p.add_argument("--modality", required=True, choices=["audio", "visual"])
    p.add_argument(
        "--fold",
        type=int,
        default=None,
        help="audio: the fold whose statistics normalise the fbank",
    )
    p.add_argument(
        "--settings",
        required=True,
        help='JSON {"spec": model.<modality>, "extract": ..., "device": ...}',
    )
    p.add_argument("--out", required=True, help=".npy file to write")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="one federated run: writes metrics.json and model.pt")
    p.add_argument("--dataset", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--rate", type=float, default=None, help="video-missing rate (not for harmony)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--partition", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--audio-embeddings", default=None)
    p.add_argument("--visual-embeddings", default=None)
    p.add_argument("--phase1", default=None, help="run directory of the method this one consumes")
    p.add_argument(
        "--settings", required=True, help='JSON {"model", "federated", "extract", "method"}'
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "table", help="print audio accuracy by method and missing rate from run records"
    )
    p.add_argument(
        "--runs", required=True, help="folder holding run directories (e.g. results/synthetic/runs)"
    )
    p.add_argument("--metric", default="top1", choices=["top1", "top5", "macro_f1"])
    p.add_argument("--rates", nargs="*", help="rates to show (default: all found)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("collect", help="one CSV row per run, from the runs' metrics.json")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("report", help="Table 1 (csv, md, tex), Figures 2 and 3 (pdf, svg, png)")
    p.add_argument("--metrics", nargs="+", required=True, help="the runs' metrics.json files")
    p.add_argument(
        "--settings",
        required=True,
        help="JSON {datasets: {name: metric}, table1_rates, figure2_rate, figure3_rates, methods}",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("download-ucf101", help="fetch, verify and lay out UCF101 (resumable)")
    p.add_argument(
        "--downloads", required=True, help="folder for the archives (kept for resumption)"
    )
    p.add_argument("--out", required=True, help="raw-data folder to create (UCF101 layout)")
    p.add_argument("--sources", required=True, help='JSON {"splits": remote, "videos": remote}')
    p.set_defaults(func=cmd_download_ucf101)

    p = sub.add_parser(
        "dvc-pull", help="dvc pull, then mark the pulled raw data and features up to date"
    )
    p.add_argument(
        "--remote", default=None, help="DVC remote (default: the repository's default remote)"
    )
    p.add_argument("--data-dir", default="data")
    p.add_argument(
        "snakemake_args",
        nargs="*",
        help="after --: arguments for snakemake (e.g. --configfile ...)",
    )
    p.set_defaults(func=cmd_dvc_pull)

    p = sub.add_parser(
        "download-activitynet", help="annotations + videos (yt-dlp or source_dir) -> UCF101 layout"
    )
    p.add_argument(
        "--downloads", required=True, help="folder for the annotations, videos and failed.tsv"
    )
    p.add_argument("--out", required=True, help="raw-data folder to create (UCF101 layout)")
    p.add_argument(
        "--settings", required=True, help="JSON of the dataset's download block plus source_dir"
    )
    p.set_defaults(func=cmd_download_activitynet)

    p = sub.add_parser("validate", help="validate (and complete with defaults) config files")
    p.add_argument("configfile", nargs="+")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
