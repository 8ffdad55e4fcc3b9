"""Hooks of the training loop (:mod:`torchspine.engine.loop`): checkpoints, evaluation,
metrics history, TensorBoard and the progress bar. Each does one job; the detection and
classification tasks register the same ones."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from torchspine.engine.checkpoint import clean_orphans, load_checkpoint, rng_state, save_checkpoint
from torchspine.engine.distributed import is_distributed
from torchspine.engine.loop import HookBase, Trainer

__all__ = ["CheckpointHook", "EvalHook", "LogHook", "barrier", "gather_rng_states", "is_main", "resume"]

logger = logging.getLogger(__name__)


def is_main() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_rng_states() -> list[dict[str, Any]]:
    """Every process's RNG states, in rank order (on rank 0; the others get their own only)."""
    mine = rng_state()
    if not is_distributed():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


class CheckpointHook(HookBase):
    """Writes ``path`` every ``period`` steps and at the end (rank 0, atomically), with every
    hook's state; removes temporary files a killed write left behind."""

    name = "checkpoint"

    def __init__(self, path: Path, period: int, *, steps_per_epoch: int) -> None:
        self.path, self.period, self.steps_per_epoch = Path(path), period, steps_per_epoch

    def before_train(self) -> None:
        if is_main():
            clean_orphans(self.path)

    def save(self) -> None:
        t: Trainer = self.trainer  # type: ignore[assignment]
        ranks = gather_rng_states()  # a collective: every rank calls it
        if is_main():
            epoch, epoch_step = divmod(t.iter, self.steps_per_epoch)
            save_checkpoint(self.path, model=t.unwrapped, optimizer=t.optimizer, scheduler=t.scheduler, ema=t.ema,
                            scaler=t.scaler, step=t.iter, epoch=epoch, epoch_step=epoch_step,
                            extra={"hooks": t.hook_states()}, rng_ranks=ranks)
        barrier()

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iter % self.period == 0 and t.iter < t.max_iter:
            self.save()

    def after_train(self) -> None:
        self.save()


def resume(trainer: Trainer, path: Path, *, rank: int = 0) -> int:
    """Load ``path`` into the trainer and its hooks; returns the step to continue from."""
    state = load_checkpoint(path, model=trainer.unwrapped, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                            ema=trainer.ema, scaler=trainer.scaler, rank=rank)
    trainer.load_hook_states(dict(state.get("extra", {}).get("hooks", {})))
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], state["epoch"],
                state["epoch_step"])
    return int(state["step"])


class EvalHook(HookBase):
    """Runs ``evaluate(step) -> metrics | None`` every ``period`` steps and after training
    (rank 0 evaluates, the others wait); keeps the results (``evals``) and the final one."""

    name = "eval"

    def __init__(self, period: int, evaluate: Callable[[int], dict[str, Any] | None],
                 summary: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.period, self.evaluate, self.summary = period, evaluate, summary
        self.evals: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None

    def _run(self) -> dict[str, Any] | None:
        t = self.trainer
        result = self.evaluate(t.iter) if is_main() else None
        if result is not None:
            self.evals.append({"step": t.iter, **{k: v for k, v in result.items() if isinstance(v, (int, float))}})
            log = t.hook("log")
            if isinstance(log, LogHook):
                log.scalars("val", result, t.iter)
                if self.summary is not None:
                    log.write(f"step {t.iter}: {self.summary(result)}")
        barrier()
        return result

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iter % self.period == 0 and t.iter < t.max_iter:
            self._run()

    def after_train(self) -> None:
        self.final = self._run()

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evals = list(state.get("evals", []))


class LogHook(HookBase):
    """Training-loss history (mean over ``period`` steps), log lines or a tqdm bar, TensorBoard
    scalars, throughput, and an optional ``on_step(step, {"loss", "lr"})`` callback."""

    name = "log"

    def __init__(self, period: int, *, total_steps: int, batch_size: int, progress: bool = True,
                 tensorboard_dir: Path | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.period, self.total_steps, self.batch_size = period, total_steps, batch_size
        self.progress, self.tensorboard_dir, self.on_step = progress, tensorboard_dir, on_step
        self.history: list[dict[str, Any]] = []
        self.writer: Any = None
        self.bar: Any = None
        self._sum, self._n = 0.0, 0
        self.images_seen, self.train_seconds, self._t0 = 0, 0.0, 0.0

    def before_train(self) -> None:
        if is_main():
            if self.tensorboard_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # optional dependency: pip install torchspine[tensorboard]
                    logger.info("tensorboard is not installed: no TensorBoard scalars")
                else:
                    self.writer = SummaryWriter(str(self.tensorboard_dir))
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.trainer.iter, desc="train", dynamic_ncols=True,
                            disable=not self.progress)
        self._t0 = time.perf_counter()

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def write(self, line: str) -> None:
        if self.bar is not None and self.progress:
            self.bar.write(line)
        elif is_main():
            logger.info("%s", line)

    def after_step(self) -> None:
        t: Trainer = self.trainer  # type: ignore[assignment]
        last = t.last
        self.images_seen += self.batch_size
        if not last.get("skipped"):
            self._sum, self._n = self._sum + last["loss"], self._n + 1
        ips = self.batch_size / max(last.get("seconds", 0.0), 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", img_s=f"{ips:.1f}", refresh=False)
        if t.iter % self.period == 0 or t.iter == t.max_iter:
            rec = {"step": t.iter, "loss": self._sum / self._n if self._n else float("nan"), "lr": last["lr"],
                   "img_per_s": ips}
            self.history.append(rec)
            self._sum, self._n = 0.0, 0
            if is_main() and not self.progress:
                logger.info("step %d/%d loss %.4f lr %.3g %.1f img/s", t.iter, self.total_steps, rec["loss"],
                            rec["lr"], ips)
            self.scalars("train", {"loss": rec["loss"], "lr": rec["lr"], "img_per_s": ips}, t.iter)
        if self.on_step is not None:
            self.on_step(t.iter, {"loss": last["loss"], "lr": last["lr"]})

    def after_train(self) -> None:
        self.train_seconds = time.perf_counter() - self._t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "partial": [self._sum, self._n]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self._sum, self._n = state.get("partial", [0.0, 0])
        self._n = int(self._n)

