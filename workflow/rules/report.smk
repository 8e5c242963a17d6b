# Run table per dataset, and the paper's Table 1 and Figures 2 and 3, from metrics.json only.


rule collect:
    input:
        lambda w: run_targets(w.dataset),
    output:
        "results/{dataset}/runs.csv",
    log:
        "results/logs/{dataset}/collect.log",
    threads: 1
    resources:
        mem_mb=500,
    conda:
        ENV
    shell:
        "python -m avfl collect --metrics {input} --out {output} 2> {log}"


rule report:
    input:
        [f for name in RUN for f in run_targets(name)],
    output:
        table1_csv=report(REPORT_FILES["table1"][0], caption="../report/table1.rst", category="Table 1"),
        table1_md=REPORT_FILES["table1"][1],
        table1_tex=REPORT_FILES["table1"][2],
        fig2_pdf=REPORT_FILES["fig2"][0],
        fig2_svg=report(REPORT_FILES["fig2"][1], caption="../report/fig2.rst", category="Figure 2"),
        fig2_png=REPORT_FILES["fig2"][2],
        fig3_pdf=REPORT_FILES["fig3"][0],
        fig3_svg=report(REPORT_FILES["fig3"][1], caption="../report/fig3.rst", category="Figure 3"),
        fig3_png=REPORT_FILES["fig3"][2],
    params:
        settings=report_settings(),
        out=lambda w, output: os.path.dirname(output.table1_csv),
    log:
        "results/logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "python -m avfl report --metrics {input} --settings {params.settings:q} --out {params.out} > {log} 2>&1"
