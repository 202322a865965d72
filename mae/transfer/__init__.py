"""Transfer evaluations (paper Tables 4-6): detection / instance segmentation (:mod:`.det`), semantic
segmentation (:mod:`.seg`) and classification transfer (:mod:`.cls`), sharing the ViT backbone with a simple
feature pyramid (:mod:`.backbone`). Command modules are imported lazily by ``mae.cli``."""
