"""Evaluations of a pretrained (or randomly initialised) encoder.

All trained evaluations run through the engine's one ``fit()`` loop; the modules here only build the model,
head, optimizer and data:

- :mod:`mae.eval.common`     shared pieces: encoder from a checkpoint or scratch, the classification task
                             (top-1/top-5), feature extraction, freezing, metrics.
- :mod:`mae.eval.finetune`   end-to-end fine-tuning (``--scratch``: the from-scratch baseline).
- :mod:`mae.eval.linprobe`   linear probing (frozen encoder, BatchNorm + Linear head, LARS).
- :mod:`mae.eval.partial_ft` fine-tuning of the last K blocks (K = 0 is the linear probe).
- :mod:`mae.eval.knn`        weighted k-NN on frozen features (no training).
"""
