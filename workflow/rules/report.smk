# The experiment's run table, Table 1, Figures 2 and 3 and the ablation table, from the runs'
# metrics.json only, under results/report/<experiment name>/.

REPORT = PLAN.report_dir()
REPORT_FILES = PLAN.report_files()


rule collect:
    input:
        PLAN.report_runs(),
    output:
        f"{REPORT}/{paths.RUNS_TABLE}",
    log:
        f"results/logs/report/{PLAN.name}/collect.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
    shell:
        "python -m avfl collect --metrics {input} --out {output} 2> {log}"


rule report:
    input:
        PLAN.report_runs(),
    output:
        table1=[
            report(
                REPORT_FILES["table1"][0],
                caption=report_caption("table1"),
                category="Table 1",
            ),
            *REPORT_FILES["table1"][1:],
        ],
        fig2=[
            REPORT_FILES["fig2"][0],
            report(
                REPORT_FILES["fig2"][1],
                caption=report_caption("fig2"),
                category="Figure 2",
            ),
            REPORT_FILES["fig2"][2],
        ],
        fig3=[
            REPORT_FILES["fig3"][0],
            report(
                REPORT_FILES["fig3"][1],
                caption=report_caption("fig3"),
                category="Figure 3",
            ),
            REPORT_FILES["fig3"][2],
        ],
        extra=[
            f
            for key, files in REPORT_FILES.items()
            if key not in ("table1", "fig2", "fig3")
            for f in files
        ],
    log:
        f"results/logs/report/{PLAN.name}/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
    params:
        settings=PLAN.report_settings(),
        out=lambda w, output: os.path.dirname(output.table1[0]),
    shell:
        "python -m avfl report --metrics {input} --settings {params.settings:q} --out {params.out} > {log} 2>&1"
