# MAE pretraining, one job per run. The declared output is metrics.json (written last); checkpoint.pt is
# rewritten every epoch and is deliberately *not* an output, so that a killed job keeps it and the rerun
# resumes from it instead of being deleted by --rerun-incomplete.


rule pretrain:
    input:
        data=data_dir(PRETRAIN_DATA),
        target=lambda wc: [target_file(wc.run)] if target_file(wc.run) else [],
    output:
        metrics=f"{R}/runs/{{run}}/pretrain/metrics.json",
    log:
        f"logs/pretrain/{{run}}.log",
    benchmark:
        f"benchmarks/pretrain/{{run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        knobs=lambda wc: run_flags(wc.run),
        stage=stage_flags("pretrain"),
        target=lambda wc, input: (
            f"--set target_path={shlex.quote(input.target[0])}" if input.target else ""
        ),
        launcher=launch,
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} pretrain --data {input.data:q} --out {params.out:q}"
        " {params.stage} {params.knobs} {params.target} > {log:q} 2>&1"
