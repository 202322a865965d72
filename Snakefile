# MAE study: data -> pretraining runs (every ablation) -> evaluations -> transfer -> summary -> tables/figures.
# Usage: snakemake --cores all [--configfile config/smoke.yaml | config/paper.yaml]; see README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


from mae.registry.evaluations import schema_view

# the schema checks structure; each stage's section is checked against its settings class at plan time
SCHEMA = "workflow/schemas/config.schema.yaml"
validate(schema_view(config, f"{workflow.basedir}/{SCHEMA}"), SCHEMA)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


# Cheap report jobs run in the head process, never as cluster jobs (no queueing on a GPU partition).
localrules:
    all,
    study_plan,
    partial_ft_linear,
    summary,
    tables,
    claims,
    figures,


rule all:
    default_target: True
    input:
        rules.tables.output,
        rules.figures.output,
        rules.claims.output,
