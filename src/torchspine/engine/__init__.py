"""Training and evaluation. ``loop`` (the one training loop: TrainerBase, hooks, the SGD step,
resumable data order), ``hooks`` (checkpoints, evaluation, logging), ``fit`` (a run put
together), ``trainer`` (detection), ``classification``, ``finetune`` (start from a saved model),
``runs`` (run folders and saved models read back), ``build``, ``config``, ``optim``,
``checkpoint``, ``distributed``, ``evaluate`` (COCO), ``predict`` (whole images or tiled),
``plots``. Import the submodules (``torchspine.engine.trainer``)."""
