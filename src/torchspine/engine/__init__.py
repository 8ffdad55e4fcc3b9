"""Training and evaluation: config, optimizer and schedules, checkpoints, distributed setup,
the training loop and COCO evaluation. Import the submodules (``torchspine.engine.trainer``)."""
