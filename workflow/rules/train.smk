# Frozen-backbone embeddings and federated training of every method.


rule embed_audio:
    input:
        fbank=f"{DATA}/features/{{dataset}}/fbank.npy",
        norm_stats=f"{DATA}/features/{{dataset}}/norm_stats.json",
    output:
        f"{DATA}/embeddings/{{dataset}}/fold{{fold}}/audio_{{backbone}}.npy",
    params:
        settings=lambda w: embed_settings(w.dataset, "audio"),
        features=lambda w, input: os.path.dirname(input.fbank),
    wildcard_constraints:
        fold=r"\d+",
    log:
        "results/logs/{dataset}/embed_audio_{backbone}_fold{fold}.log",
    benchmark:
        "results/benchmarks/{dataset}/embed_audio_{backbone}_fold{fold}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m avfl embed --features {params.features} --modality audio --fold {wildcards.fold} "
        "--settings {params.settings:q} --out {output} 2> {log}"


rule embed_visual:
    input:
        frames=f"{DATA}/features/{{dataset}}/frames.npy",
    output:
        f"{DATA}/embeddings/{{dataset}}/visual_{{backbone}}.npy",
    params:
        settings=lambda w: embed_settings(w.dataset, "visual"),
        features=lambda w, input: os.path.dirname(input.frames),
    log:
        "results/logs/{dataset}/embed_visual_{backbone}.log",
    benchmark:
        "results/benchmarks/{dataset}/embed_visual_{backbone}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m avfl embed --features {params.features} --modality visual "
        "--settings {params.settings:q} --out {output} 2> {log}"


rule train:
    input:
        unpack(train_inputs),
    output:
        metrics="results/{dataset}/runs/fold{fold}/{method}/r{rate}/seed{seed}/metrics.json",
        model="results/{dataset}/runs/fold{fold}/{method}/r{rate}/seed{seed}/model.pt",
    params:
        settings=lambda w: train_settings(w.dataset, w.method),
        extra=train_extra_args,
        out=lambda w, output: os.path.dirname(output.metrics),
    wildcard_constraints:
        method=one_of(RATE_METHODS),
        fold=r"\d+",
        seed=r"\d+",
        rate=r"[0-9.]+",
    log:
        "results/logs/{dataset}/train/fold{fold}_{method}_r{rate}_seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/train/fold{fold}_{method}_r{rate}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m avfl train --dataset {wildcards.dataset} --fold {wildcards.fold} "
        "--method {wildcards.method} --rate {wildcards.rate} --seed {wildcards.seed} "
        "--threads {threads} {params.extra} --settings {params.settings:q} "
        "--out {params.out} 2> {log}"


rule train_rate_free:
    input:
        unpack(train_inputs),
    output:
        metrics="results/{dataset}/runs/fold{fold}/{method}/seed{seed}/metrics.json",
        model="results/{dataset}/runs/fold{fold}/{method}/seed{seed}/model.pt",
    params:
        settings=lambda w: train_settings(w.dataset, w.method),
        extra=train_extra_args,
        out=lambda w, output: os.path.dirname(output.metrics),
    wildcard_constraints:
        method=one_of(RATE_FREE_METHODS),
        fold=r"\d+",
        seed=r"\d+",
    log:
        "results/logs/{dataset}/train/fold{fold}_{method}_seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/train/fold{fold}_{method}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m avfl train --dataset {wildcards.dataset} --fold {wildcards.fold} "
        "--method {wildcards.method} --seed {wildcards.seed} "
        "--threads {threads} {params.extra} --settings {params.settings:q} "
        "--out {params.out} 2> {log}"
