# Folds, dev split, Dirichlet clients and the nested missing-video order, per partition seed.


rule partition:
    input:
        manifest=feature(paths.MANIFEST),
    output:
        json=paths.PARTITION,
        stats=paths.partition_companions(paths.PARTITION)[0],
        heatmap=paths.partition_companions(paths.PARTITION)[1],
    log:
        "results/logs/{dataset}/partition_{variant}_fold{fold}_seed{seed}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=lambda w: PLAN.partition_settings(w.dataset, w.variant),
    shell:
        "python -m avfl partition --manifest {input.manifest} --dataset {wildcards.dataset} "
        "--fold {wildcards.fold} --seed {wildcards.seed} --settings {params.settings:q} "
        "--out {output.json} 2> {log}"
