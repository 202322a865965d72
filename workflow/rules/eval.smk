# Evaluations of a pretraining run (or of a random init: run "scratch"): one CLI call each.
from mae.evaluations import partial_ft_head


rule finetune:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/finetune/metrics.json",
    log:
        f"logs/finetune/{{any_run}}.log",
    benchmark:
        f"benchmarks/finetune/{{any_run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        launcher=launch,
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=finetune_flags,
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} finetune --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"


rule linprobe:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/linprobe/metrics.json",
    log:
        f"logs/linprobe/{{any_run}}.log",
    benchmark:
        f"benchmarks/linprobe/{{any_run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        launcher=launch,
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=stage_flags("linprobe"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} linprobe --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"


rule partial_ft:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
        # partial_ft.head probe (the default): the head starts as this run's trained linear probe (K = 0)
        probe=lambda wc: (
            [f"{R}/runs/{wc.any_run}/linprobe/metrics.json"]
            if partial_ft_head(config) == "probe"
            else []
        ),
    output:
        metrics=f"{R}/runs/{{any_run}}/partial_ft-{{blocks}}/metrics.json",
    log:
        f"logs/partial_ft/{{any_run}}-{{blocks}}.log",
    benchmark:
        f"benchmarks/partial_ft/{{any_run}}-{{blocks}}.tsv"
    wildcard_constraints:
        blocks="[1-9][0-9]*",
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        launcher=launch,
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        # K > 0: the fine-tuning recipe with the `partial_ft` overrides (paper Fig. 9); K = 0: partial_ft_linear
        stage=f"{stage_flags('finetune')} {section_overrides('partial_ft')}",
        head=lambda wc, input: (
            f"--head-from {shlex.quote(os.path.dirname(input.probe[0]))}"
            if input.probe
            else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} partial-ft --blocks {wildcards.blocks} --data {input.data:q}"
        " --out {params.out:q} {params.init} {params.head} {params.stage} > {log:q} 2>&1"


# Fig. 9's K = 0 is the linear probe of the same run: `mae partial-ft --reuse` copies that result once it has
# checked the settings, init and data (a local job: no GPU is held for a copy).
rule partial_ft_linear:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
        probe=f"{R}/runs/{{any_run}}/linprobe/metrics.json",
    output:
        metrics=f"{R}/runs/{{any_run}}/partial_ft-0/metrics.json",
    log:
        f"logs/partial_ft/{{any_run}}-0.log",
    benchmark:
        f"benchmarks/partial_ft/{{any_run}}-0.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        probe=lambda wc, input: os.path.dirname(input.probe),
        init=init_flag,
        stage=stage_flags("linprobe"),
    shell:
        "mae partial-ft --blocks 0 --reuse {params.probe:q} --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"


rule knn:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/knn/metrics.json",
    log:
        f"logs/knn/{{any_run}}.log",
    benchmark:
        f"benchmarks/knn/{{any_run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=stage_flags("knn"),
    shell:
        "OMP_NUM_THREADS={threads} mae knn --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"
