# Frozen-backbone embeddings, and the training jobs of every method, variant, fold and seed.


rule embed_audio:
    input:
        fbank=feature(paths.FBANK),
        norm_stats=feature(paths.NORM_STATS),
    output:
        embeddings=paths.fill(paths.AUDIO_EMBEDDING, data=DATA),
        # Where and how they were computed: device, float32 precision, library versions.
        provenance=str(paths.provenance(paths.fill(paths.AUDIO_EMBEDDING, data=DATA))),
    log:
        "results/logs/{dataset}/embed_audio_{variant}_{backbone}_fold{fold}.log",
    benchmark:
        "results/benchmarks/{dataset}/embed_audio_{variant}_{backbone}_fold{fold}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic", "ucf101", "activitynet", "cremad")),
    conda:
        ENV
    threads: 2
    resources:
        gpu=lambda w: int(PLAN.needs_gpu(w.variant, "audio")),
        mem_mb=8000,
        runtime=60,
    params:
        settings=lambda w: PLAN.embed_settings(w.dataset, w.variant, "audio"),
        features=lambda w, input: os.path.dirname(input.fbank),
    shell:
        "python -m avfl embed --features {params.features} --modality audio --fold {wildcards.fold} "
        "--settings {params.settings:q} --out {output.embeddings} 2> {log}"


rule embed_visual:
    input:
        frames=feature(paths.FRAMES),
    output:
        embeddings=paths.fill(paths.VISUAL_EMBEDDING, data=DATA),
        # Where and how they were computed: device, float32 precision, library versions.
        provenance=str(paths.provenance(paths.fill(paths.VISUAL_EMBEDDING, data=DATA))),
    log:
        "results/logs/{dataset}/embed_visual_{variant}_{backbone}.log",
    benchmark:
        "results/benchmarks/{dataset}/embed_visual_{variant}_{backbone}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic", "ucf101", "activitynet", "cremad")),
    conda:
        ENV
    threads: 2
    resources:
        gpu=lambda w: int(PLAN.needs_gpu(w.variant, "visual")),
        mem_mb=8000,
        runtime=60,
    params:
        settings=lambda w: PLAN.embed_settings(w.dataset, w.variant, "visual"),
        features=lambda w, input: os.path.dirname(input.frames),
    shell:
        "python -m avfl embed --features {params.features} --modality visual "
        "--settings {params.settings:q} --out {output.embeddings} 2> {log}"


# One rule per training job (runs of one method and settings on one fold, see avfl.plan):
# a job's outputs are exactly its runs' records, so Snakemake reruns a job when one of its
# runs is missing or its settings change, and nothing else.
for _job in PLAN.jobs:

    rule:
        name:
            _job.name
        input:
            _job.inputs,
        output:
            metrics=[run.metrics for run in _job.runs],
            models=[run.model for run in _job.runs],
        log:
            f"results/logs/{_job.dataset}/train/{_job.name}.log",
        benchmark:
            f"results/benchmarks/{_job.dataset}/train/{_job.name}.tsv"
        priority: _job.priority
        group:
            _job.group  # GPU jobs: none (a group job would sum its jobs' GPUs), see PlannedJob.group
        conda:
            ENV
        # A GPU job's own CPU work (BMSFed's selection, the references' linear probes) gets a
        # second core; a CPU job trains on one (several jobs share the machine).
        threads: 2 if _job.gpu else 1
        resources:
            gpu=int(_job.gpu),
            mem_mb=2000 + 500 * len(_job.runs),
            runtime=240,
        params:
            job=_job.spec.to_json(),
        shell:
            "python -m avfl train --job {params.job:q} --threads {threads} 2> {log}"
