"""Per-method trainers: what is trained, on which objective, from which data.

* ``simclr``: the SimCLR victim (``train_simclr``, warm starts).
* ``watermark``: the SimCLR victim trained jointly with the secret rotation
  watermark (``train_watermark_victim``).
* ``surrogate``: a surrogate encoder trained on the victim API's answers
  under a stealing loss (``train_surrogate``: direct extraction and its
  variants; per-loss defaults from ``losses.LOSSES``).
* ``stacked``: K surrogates of equal shapes trained in one compiled program
  (``train_surrogates_stacked``, budget scans).

Every trainer builds its model (``models``), state and step, and hands them
to the generic loop ``training.loop.run_training`` (resume, checkpoints,
logging). Dependencies point down: trainers import ``models``, ``losses``,
``data``, ``training`` and ``evaluation.features``; nothing below imports
``trainers``.
"""
