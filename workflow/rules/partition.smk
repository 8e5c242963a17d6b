# Folds, dev split, Dirichlet clients and the nested missing-video order, per partition seed.


rule partition:
    input:
        manifest=f"{DATA}/features/{{dataset}}/manifest.tsv",
    output:
        json="results/{dataset}/partition/fold{fold}_seed{seed}.json",
        stats="results/{dataset}/partition/fold{fold}_seed{seed}_stats.tsv",
        heatmap="results/{dataset}/partition/fold{fold}_seed{seed}_heatmap.png",
    params:
        settings=lambda w: json.dumps(config["partition"], sort_keys=True),
    wildcard_constraints:
        fold=r"\d+",
        seed=r"\d+",
    log:
        "results/logs/{dataset}/partition_fold{fold}_seed{seed}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        ENV
    shell:
        "python -m avfl partition --manifest {input.manifest} --dataset {wildcards.dataset} "
        "--fold {wildcards.fold} --seed {wildcards.seed} --settings {params.settings:q} "
        "--out {output.json} --stats {output.stats} --heatmap {output.heatmap} 2> {log}"
