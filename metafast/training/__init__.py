"""The parts of ``python -m metafast train`` / ``eval`` (the commands themselves are in
:mod:`metafast.train`; the RL commands in :mod:`metafast.rl.cli` and the demo share this
toolkit), one job per module:

* :mod:`~metafast.training.args`: command lines, defaults, checks, merging a resumed run's arguments;
* :mod:`~metafast.training.checkpoint`: writing, reading and restoring checkpoints;
* :mod:`~metafast.training.files`: atomic writes of every output, the output folder, one run per folder;
* :mod:`~metafast.training.evaluation`: accuracy on held-out tasks, the papers' figures;
* :mod:`~metafast.training.plots`: training curves;
* :mod:`~metafast.training.results`: the results JSON.

Ranks, and SIGINT / SIGTERM, are handled in :mod:`metafast.distributed` and the training loops only.
"""
