# ModalityMirror reproduction pipeline. Stages live in workflow/rules/*.smk; what each job does
# is planned by the torch-free `avfl.plan` and done by the `avfl` package (src/avfl), which
# every rule calls as `python -m avfl <command>`.
#
#   snakemake --cores 2 all                                  # embedded synthetic dataset
#   snakemake --cores 8 --resources gpu=2 all --configfile config/ucf101.yaml


configfile: workflow.source_path("config/config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/partition.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.all_targets(),
