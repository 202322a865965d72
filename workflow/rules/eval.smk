# Evaluations of a pretraining run (or of a baseline: run "scratch..." = random init, "supervised..." = the
# from-scratch fine-tuned encoder): every evaluation of the registry (mae/registry/evaluations.py), plug-ins
# included, gets one rule of one shape, `mae <command> --data D --out O <init> <settings>`, with the folder,
# data, settings and limits its registry entry gives. Transfers (COCO-style detection/instance segmentation,
# semantic segmentation, classification on other datasets) are evaluations too.
for _ev in EVALUATIONS.values():

    rule:
        name:
            _ev.name
        input:
            **eval_extras(_ev)[0],
            data=eval_data(_ev),
            init=init_input,
        output:
            metrics=f"{R}/runs/{{any_run}}/{eval_folder(_ev)}/metrics.json",
        log:
            f"logs/{_ev.name}/{{any_run}}{eval_folder(_ev)[len(_ev.name):]}.log",
        benchmark:
            f"benchmarks/{_ev.name}/{{any_run}}{eval_folder(_ev)[len(_ev.name):]}.tsv"
        wildcard_constraints:
            **({"blocks": "[1-9][0-9]*"} if _ev.name == "partial_ft" else {}),
        conda:
            "../envs/mae.yaml"
        threads: config["threads"]
        resources:
            mem_mb=_ev.mem_mb,
            runtime=_ev.runtime,
        params:
            **eval_params(_ev),
        shell:
            eval_shell_of(locals().get("rule", _ev.name))


# Fig. 9's K = 0 is the linear probe of the same run: `mae partial-ft --reuse` copies that result once it has
# checked the settings, init and data (a local job: no GPU is held for a copy).
use rule partial_ft as partial_ft_linear with:
    input:
        data=data_dir(PRETRAIN_DATA),
        init=init_input,
        probe=f"{R}/runs/{{any_run}}/linprobe/metrics.json",
    wildcard_constraints:
        blocks="0",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        launcher="mae",
        head=lambda wc, input: f"--reuse {shlex.quote(os.path.dirname(input.probe))}",
        stage=stage_flags("linprobe"),
