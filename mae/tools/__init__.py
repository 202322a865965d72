"""Tools around the study, not stages of it: the throughput benchmark (:mod:`.bench`, with :mod:`.roofline` and
:mod:`.stage_rates` for ``mae bench stages``), the reconstruction grid (:mod:`.visualize`), weight export
(:mod:`.export`), the process launcher of training rules (:mod:`.launch`) and the warm-start server
(:mod:`.warmstart`). Command modules are imported lazily by ``mae.cli``."""
