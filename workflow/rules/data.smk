# Raw data (generated, downloaded, or linked from a copy in UCF101 layout) and feature extraction.


rule generate_synthetic:
    output:
        directory(RAW),
    log:
        "results/logs/{dataset}/generate.log",
    benchmark:
        "results/benchmarks/{dataset}/generate.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic")),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
    params:
        settings=lambda w: json.dumps(DATASETS[w.dataset]["synthetic"], sort_keys=True),
    shell:
        "python -m avfl generate --settings {params.settings:q} --out {output} "
        "--threads {threads} 2> {log}"


rule import_source_dir:
    output:
        directory(RAW),
    log:
        "results/logs/{dataset}/import.log",
    wildcard_constraints:
        dataset=one_of(datasets_from("ucf101", copy=True)),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
    params:
        source=lambda w: DATASETS[w.dataset]["source_dir"],
    shell:
        "python -m avfl import-layout --source {params.source:q} --out {output} 2> {log}"


rule import_cremad:
    output:
        directory(RAW),
    log:
        "results/logs/{dataset}/import.log",
    wildcard_constraints:
        dataset=one_of(datasets_from("cremad")),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
    params:
        source=lambda w: DATASETS[w.dataset]["source_dir"],
    shell:
        "python -m avfl import-cremad --source {params.source:q} --out {output} 2> {log}"


rule download_ucf101:
    output:
        directory(RAW),
    log:
        "results/logs/{dataset}/download.log",
    wildcard_constraints:
        dataset=one_of(datasets_from("ucf101", copy=False)),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=600,
    params:
        sources=lambda w: ucf101_sources(w.dataset),
        downloads=lambda w: paths.fill(paths.DOWNLOADS, data=DATA, dataset=w.dataset),
    shell:
        "python -m avfl download-ucf101 --downloads {params.downloads} --out {output} "
        "--sources {params.sources:q} 2> {log}"


rule download_activitynet:
    output:
        directory(RAW),
    log:
        "results/logs/{dataset}/download.log",
    wildcard_constraints:
        dataset=one_of(datasets_from("activitynet")),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=2880,
    params:
        settings=lambda w: json.dumps(
            {
                **DATASETS[w.dataset]["download"],
                "source_dir": DATASETS[w.dataset].get("source_dir"),
            },
            sort_keys=True,
        ),
        downloads=lambda w: paths.fill(paths.DOWNLOADS, data=DATA, dataset=w.dataset),
    shell:
        "python -m avfl download-activitynet --downloads {params.downloads} --out {output} "
        "--settings {params.settings:q} 2> {log}"


rule extract_features:
    input:
        raw=RAW,
    output:
        manifest=feature(paths.MANIFEST),
        frames=feature(paths.FRAMES),
        fbank=feature(paths.FBANK),
        norm_stats=feature(paths.NORM_STATS),
    log:
        "results/logs/{dataset}/extract.log",
    benchmark:
        "results/benchmarks/{dataset}/extract.tsv"
    wildcard_constraints:
        dataset=one_of([d for d in DATASETS if DATASETS[d]["source"] != "rehearsal"]),
    conda:
        ENV
    threads: 8  # Snakemake lowers it to --cores where fewer are given
    resources:
        mem_mb=4000,
    params:
        settings=lambda w: json.dumps(DATASETS[w.dataset]["extract"], sort_keys=True),
        out=lambda w, output: os.path.dirname(output.manifest),
    shell:
        "python -m avfl extract --raw {input.raw} --out {params.out} "
        "--settings {params.settings:q} --threads {threads} 2> {log}"


for _name in datasets_from("rehearsal"):

    rule:
        name:
            f"generate_rehearsal_{_name}"
        output:
            manifest=paths.feature(DATA, _name, paths.MANIFEST),
            norm_stats=paths.feature(DATA, _name, paths.NORM_STATS),
            embeddings=rehearsal_embeddings(_name),
        log:
            f"results/logs/{_name}/generate.log",
        benchmark:
            f"results/benchmarks/{_name}/generate.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=2000,
        params:
            settings=json.dumps(
                {
                    "extract": DATASETS[_name]["extract"],
                    **DATASETS[_name]["rehearsal"],
                },
                sort_keys=True,
            ),
            features=lambda w, output: os.path.dirname(output.manifest),
            embeddings=lambda w, output: os.path.commonpath(list(output.embeddings)),
            backbones=f"--audio-backbone {config['model']['audio']['backbone']} --visual-backbone {config['model']['visual']['backbone']}",
        shell:
            "python -m avfl generate-rehearsal --settings {params.settings:q} {params.backbones} "
            "--features {params.features} --embeddings {params.embeddings} 2> {log}"
