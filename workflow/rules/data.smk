# Datasets (generated or described by path) and the fitted targets some runs need (PCA, tokenizer).


rule prepare_data:
    output:
        directory(f"{R}/data/{{dataset}}"),
    log:
        f"logs/prepare_data/{{dataset}}.log",
    benchmark:
        f"benchmarks/prepare_data/{{dataset}}.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        flags=lambda wc: cli_flags(config["datasets"][wc.dataset]),
    shell:
        "mae prepare-data --out {output:q} {params.flags} > {log:q} 2>&1"


rule fit_pca:
    input:
        data_dir(PRETRAIN_DATA),
    output:
        f"{R}/targets/{PRETRAIN_DATA}/pca.pt",
    log:
        "logs/fit_pca.log",
    benchmark:
        "benchmarks/fit_pca.tsv"
    conda:
        "../envs/mae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        flags=cli_flags(config.get("fit_pca")),
        patch=lambda wc: config.get("patch_size", 4),
    shell:
        "mae fit-pca --data {input:q} --out {output:q} --patch-size {params.patch} {params.flags} > {log:q} 2>&1"


rule train_tokenizer:
    input:
        data_dir(PRETRAIN_DATA),
    output:
        f"{R}/targets/{PRETRAIN_DATA}/tokenizer.pt",
    log:
        "logs/train_tokenizer.log",
    benchmark:
        "benchmarks/train_tokenizer.tsv"
    conda:
        "../envs/mae.yaml"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        flags=cli_flags(config.get("train_tokenizer")),
        patch=lambda wc: config.get("patch_size", 4),
    shell:
        "OMP_NUM_THREADS={threads} mae train-tokenizer --data {input:q} --out {output:q}"
        " --patch-size {params.patch} {params.flags} > {log:q} 2>&1"
