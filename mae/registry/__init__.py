"""The registry: everything a study can name, declared once and free of torch.

- :mod:`mae.registry.knobs`: the pretraining settings an ablation varies, with their types, ranges and labels;
- :mod:`mae.registry.choices`: the named samplers, targets, augmentations and models (``"module:object"``);
- :mod:`mae.registry.evaluations`: the evaluations of an encoder, with what their jobs need;
- :mod:`mae.registry.ablations`: the paper's ablation tables and figures.

The command line, the study planner, the Snakefile's rules, the config schema's checks, the summary, the tables
and the docs read these. Installed packages add choices and evaluations through entry points
(``mae_study.<kind>``, ``mae_study.evaluations``), which every process sees.
"""
