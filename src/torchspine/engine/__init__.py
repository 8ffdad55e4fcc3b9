"""Training and evaluation. ``loop`` (the one training loop: TrainerBase, hooks, the SGD step,
resumable data order), ``hooks`` (checkpoints, evaluation, logging), ``fit`` (a run put
together), ``trainer`` (detection), ``classification``, ``config``, ``optim``, ``checkpoint``,
``distributed``, ``evaluate`` (COCO), ``predict``, ``plots``. Import the submodules
(``torchspine.engine.trainer``)."""
