# Raw data (generated or imported in UCF101 layout) and feature extraction.


rule generate_synthetic:
    output:
        directory(f"{DATA}/raw/{{dataset}}"),
    params:
        settings=lambda w: stage_settings(w.dataset, "synthetic"),
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic")),
    log:
        "results/logs/{dataset}/generate.log",
    benchmark:
        "results/benchmarks/{dataset}/generate.tsv"
    threads: 2
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "python -m avfl generate --settings {params.settings:q} --out {output} "
        "--threads {threads} 2> {log}"


rule import_source_dir:
    output:
        directory(f"{DATA}/raw/{{dataset}}"),
    params:
        source=lambda w: DATASETS[w.dataset]["source_dir"],
    wildcard_constraints:
        dataset=one_of(datasets_from("ucf101", copy=True)),
    log:
        "results/logs/{dataset}/import.log",
    threads: 1
    resources:
        mem_mb=500,
    conda:
        ENV
    shell:
        "python -m avfl import-layout --source {params.source:q} --out {output} 2> {log}"


rule download_ucf101:
    output:
        directory(f"{DATA}/raw/{{dataset}}"),
    params:
        sources=lambda w: ucf101_sources(w.dataset),
        downloads=lambda w: f"{DATA}/downloads/{w.dataset}",
    wildcard_constraints:
        dataset=one_of(datasets_from("ucf101", copy=False)),
    log:
        "results/logs/{dataset}/download.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=600,
    conda:
        ENV
    shell:
        "python -m avfl download-ucf101 --downloads {params.downloads} --out {output} "
        "--sources {params.sources:q} 2> {log}"


rule download_activitynet:
    output:
        directory(f"{DATA}/raw/{{dataset}}"),
    params:
        settings=lambda w: activitynet_settings(w.dataset),
        downloads=lambda w: f"{DATA}/downloads/{w.dataset}",
    wildcard_constraints:
        dataset=one_of(datasets_from("activitynet")),
    log:
        "results/logs/{dataset}/download.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=2880,
    conda:
        ENV
    shell:
        "python -m avfl download-activitynet --downloads {params.downloads} --out {output} "
        "--settings {params.settings:q} 2> {log}"


rule extract_features:
    input:
        raw=f"{DATA}/raw/{{dataset}}",
    output:
        manifest=f"{DATA}/features/{{dataset}}/manifest.tsv",
        frames=f"{DATA}/features/{{dataset}}/frames.npy",
        fbank=f"{DATA}/features/{{dataset}}/fbank.npy",
        norm_stats=f"{DATA}/features/{{dataset}}/norm_stats.json",
    params:
        settings=lambda w: stage_settings(w.dataset, "extract"),
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        "results/logs/{dataset}/extract.log",
    benchmark:
        "results/benchmarks/{dataset}/extract.tsv"
    threads: 8
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "python -m avfl extract --raw {input.raw} --out {params.out} "
        "--settings {params.settings:q} --threads {threads} 2> {log}"
