# Summary of every metric -> the paper's tables, figures and claims check (also rebuilt by `dvc repro`).


rule study_plan:
    output:
        f"{R}/summary/study.json",
    params:
        plan=lambda wc: {k: v for k, v in config.items()},
    log:
        "logs/study_plan.log",
    benchmark:
        "benchmarks/study_plan.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    run:
        from mae.study import write_plan

        write_plan(params.plan, output[0])


rule summary:
    input:
        plan=rules.study_plan.output,
        metrics=all_metrics(),
    output:
        csv=f"{R}/summary/runs.csv",
        metrics=f"{R}/summary/metrics.json",
        curves=f"{R}/summary/loss_curves.csv",
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{MAE} summarize --runs {R}/runs --study {input.plan} --out {output.csv} > {log} 2>&1"


rule tables:
    input:
        rules.summary.output.csv,
    output:
        report(
            directory(f"{R}/tables"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        "logs/tables.log",
    benchmark:
        "benchmarks/tables.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{MAE} tables --summary {input} --out {output} > {log} 2>&1"


rule claims:
    input:
        rules.summary.output.csv,
    output:
        csv=report(f"{R}/claims/claims.csv", caption="../report/claims.rst", category="Claims"),
        md=f"{R}/claims/claims.md",
    log:
        "logs/claims.log",
    benchmark:
        "benchmarks/claims.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{MAE} claims --summary {input} --out {R}/claims > {log} 2>&1"


rule figures:
    input:
        csv=rules.summary.output.csv,
        data=data_dir(PRETRAIN_DATA),
    output:
        report(
            directory(f"{R}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "{MAE} figures --summary {input.csv} --runs {R}/runs --data {input.data} --out {output} > {log} 2>&1"
