# Transfer of an encoder (MAE run, "scratch" = random init, "supervised" = from-scratch fine-tuned encoder):
# COCO-style detection/instance segmentation, semantic segmentation, classification on other datasets.


rule transfer_det:
    input:
        data=data_dir((config.get("transfer_det") or {}).get("dataset", PRETRAIN_DATA)),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/transfer_det/metrics.json",
    log:
        f"logs/transfer_det/{{any_run}}.log",
    benchmark:
        f"benchmarks/transfer_det/{{any_run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        runtime=240,
    params:
        launcher=launch,
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=stage_flags("transfer_det"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} transfer-det --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"


rule transfer_seg:
    input:
        data=data_dir((config.get("transfer_seg") or {}).get("dataset", PRETRAIN_DATA)),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/transfer_seg/metrics.json",
    log:
        f"logs/transfer_seg/{{any_run}}.log",
    benchmark:
        f"benchmarks/transfer_seg/{{any_run}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        runtime=240,
    params:
        launcher=launch,
        out=lambda wc, output: os.path.dirname(output.metrics),
        init=init_flag,
        stage=stage_flags("transfer_seg"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} transfer-seg --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"


rule transfer_cls:
    input:
        data=lambda wc: data_dir(wc.dataset),
        init=init_input,
    output:
        metrics=f"{R}/runs/{{any_run}}/transfer_cls-{{dataset}}/metrics.json",
    log:
        f"logs/transfer_cls/{{any_run}}-{{dataset}}.log",
    benchmark:
        f"benchmarks/transfer_cls/{{any_run}}-{{dataset}}.tsv"
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
        # the study's fine-tuning recipe with the `transfer_cls` overrides (the paper transfers with its
        # fine-tuning recipe; the class defaults alone are the ImageNet one: mixup, RandAugment, 100 epochs)
        stage=f"{stage_flags('finetune')} {section_overrides('transfer_cls')}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} transfer-cls --data {input.data:q} --out {params.out:q} {params.init}"
        " {params.stage} > {log:q} 2>&1"
