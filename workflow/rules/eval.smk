# Evaluations of a pretraining run (or of a random init: run "scratch"): one CLI call each.


rule finetune:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/finetune/metrics.json",
    params:
        out=lambda wc: f"{R}/runs/{wc.any_run}/finetune",
        init=init_flag,
        stage=lambda wc: stage_flags("finetune")
        + (" " + stage_flags("scratch_finetune") if wc.any_run == "scratch" else ""),
    log:
        f"logs/finetune/{{any_run}}.log",
    benchmark:
        f"benchmarks/finetune/{{any_run}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "OMP_NUM_THREADS={threads} {MAE} finetune --data {input.data} --out {params.out} {params.init}"
        " --device {config[device]} {params.stage} > {log} 2>&1"


rule linprobe:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/linprobe/metrics.json",
    params:
        out=lambda wc: f"{R}/runs/{wc.any_run}/linprobe",
        init=init_flag,
        stage=stage_flags("linprobe"),
    log:
        f"logs/linprobe/{{any_run}}.log",
    benchmark:
        f"benchmarks/linprobe/{{any_run}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} {MAE} linprobe --data {input.data} --out {params.out} {params.init}"
        " --device {config[device]} {params.stage} > {log} 2>&1"


rule partial_ft:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/partial_ft-{{blocks}}/metrics.json",
    params:
        out=lambda wc: f"{R}/runs/{wc.any_run}/partial_ft-{wc.blocks}",
        init=init_flag,
        stage=stage_flags("partial_ft", drop=("blocks",)),
    log:
        f"logs/partial_ft/{{any_run}}-{{blocks}}.log",
    benchmark:
        f"benchmarks/partial_ft/{{any_run}}-{{blocks}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "OMP_NUM_THREADS={threads} {MAE} partial-ft --blocks {wildcards.blocks} --data {input.data}"
        " --out {params.out} {params.init} --device {config[device]} {params.stage} > {log} 2>&1"


rule knn:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/knn/metrics.json",
    params:
        out=lambda wc: f"{R}/runs/{wc.any_run}/knn",
        init=init_flag,
        stage=stage_flags("knn"),
    log:
        f"logs/knn/{{any_run}}.log",
    benchmark:
        f"benchmarks/knn/{{any_run}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "OMP_NUM_THREADS={threads} {MAE} knn --data {input.data} --out {params.out} {params.init}"
        " --device {config[device]} {params.stage} > {log} 2>&1"
