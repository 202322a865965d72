"""The stages of a study, one module per stage, each named as its command, rule, results folder and config
section. All trained stages run through the engine's one ``fit()`` loop; the modules here only build the model,
head, optimizer and data:

- :mod:`mae.stages.pretrain`       MAE pretraining.
- :mod:`mae.stages.finetune`       end-to-end fine-tuning (``--scratch``: the from-scratch baseline).
- :mod:`mae.stages.linprobe`       linear probing (frozen encoder, BatchNorm + Linear head, LARS).
- :mod:`mae.stages.partial_ft`     fine-tuning of the last K blocks (K = 0 is the linear probe).
- :mod:`mae.stages.knn`            weighted k-NN on frozen features (no training).
- :mod:`mae.stages.transfer_det`   detection / instance segmentation transfer (paper Table 4).
- :mod:`mae.stages.transfer_seg`   semantic segmentation transfer (paper Table 5).
- :mod:`mae.stages.transfer_cls`   classification transfer to another dataset (paper Table 6).

Shared by several stages:

- :mod:`mae.stages.classification` the pieces every classification evaluation uses: the ``--init`` options,
                                   the encoder from a checkpoint or random init, the classification task
                                   (top-1/top-5), feature extraction, freezing, and :func:`run_task`, the one
                                   way an evaluation or transfer stage ends (``metrics.json``, weights).
- :mod:`mae.stages.backbone`       the ViT backbone with a simple feature pyramid of the dense transfers.
"""
