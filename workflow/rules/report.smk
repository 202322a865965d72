# Summary of every metric -> the paper's tables, figures and claims check (also rebuilt by `dvc repro`).
from mae.report.captions import figure_title, study_name, table_title

# In `snakemake --report`, each table and figure is labelled with its name and the study (the captions print
# both): a table by the title of its own Markdown file, a figure by mae/report/captions.py.
STUDY = study_name(config, workflow.configfiles, workflow.overwrite_configfiles)


rule study_plan:
    input:
        plan_request(),
    output:
        f"{R}/summary/study.json",
    log:
        "logs/study_plan.log",
    benchmark:
        "benchmarks/study_plan.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        plan=PLAN_CONFIG,
    run:
        from mae.study import write_plan

        write_plan(params.plan, output[0])


rule summary:
    input:
        plan=rules.study_plan.output,
        # partial=true: summarise what the parts run so far have produced (with --forcerun summary)
        metrics=[] if config_flag("partial") else all_metrics(),
    output:
        csv=f"{R}/summary/runs.csv",
        metrics=f"{R}/summary/metrics.json",
        curves=f"{R}/summary/loss_curves.csv",
        replicates=f"{R}/summary/replicates.npz",
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=runs_dir,
    shell:
        "mae summarize --runs {params.runs:q} --study {input.plan:q} --out {output.csv:q} > {log:q} 2>&1"


rule tables:
    input:
        csv=rules.summary.output.csv,
        replicates=rules.summary.output.replicates,
    output:
        report(
            directory(f"{R}/tables"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
            labels=lambda wildcards, output: {
                "table": table_title(f"{output[0]}/{wildcards.name}.md"),
                "config": STUDY,
            },
        ),
    log:
        "logs/tables.log",
    benchmark:
        "benchmarks/tables.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mae tables --summary {input.csv:q} --replicates {input.replicates:q} --out {output:q} > {log:q} 2>&1"


rule claims:
    input:
        csv=rules.summary.output.csv,
        replicates=rules.summary.output.replicates,
    output:
        csv=report(
            f"{R}/claims/claims.csv", caption="../report/claims.rst", category="Claims"
        ),
        md=f"{R}/claims/claims.md",
    log:
        "logs/claims.log",
    benchmark:
        "benchmarks/claims.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: os.path.dirname(output.csv),
    shell:
        "mae claims --summary {input.csv:q} --replicates {input.replicates:q} --out {params.out:q} > {log:q} 2>&1"


rule figures:
    input:
        csv=rules.summary.output.csv,
        replicates=rules.summary.output.replicates,
        plan=rules.study_plan.output,
        data=data_dir(PRETRAIN_DATA),
    output:
        report(
            directory(f"{R}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels=lambda wildcards: {
                "figure": figure_title(wildcards.name),
                "config": STUDY,
            },
        ),
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        runs=runs_dir,
    shell:
        "mae figures --summary {input.csv:q} --replicates {input.replicates:q} --runs {params.runs:q} --data {input.data:q} --out {output:q} > {log:q} 2>&1"


# Parts of a long study, one target per table/figure (`snakemake --cores all part_fig5`): the pretraining runs
# and evaluations that table needs, nothing else. `--config partial=true --forcerun summary` then reports
# on what exists so far (docs/results.md, "The CPU study").
for _part, _files in study_parts().items():

    rule:
        name:
            f"part_{_part}"
        input:
            _files,
            rules.study_plan.output,
        localrule: True
