"""Cost of sample-keyed noise (stochastic depth + DropBlock drawn per sample, for exact resume and
DDP == one process) beside the same training step drawing from the global RNG, in one run.

    PYTHONPATH=src python benchmarks/bench_sample_noise.py [--size 128] [--batch 4] [--repeats 5] [--device cpu]

Prints the median step time of each and their ratio (sample-keyed / global), interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchspine import create_model
from torchspine.layers.dropout import add_dropblock, sample_noise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = create_model("retinanet_spinenet49s", num_classes=4, image_size=args.size, filter_size_scale=0.25,
                         endpoints_num_filters=32, head_num_filters=32, head_num_convs=1,
                         stochastic_depth_rate=0.2)
    add_dropblock(model)
    model.to(dev).train()
    images = [torch.rand(3, args.size, args.size, device=dev) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, args.size / 2, args.size / 2]], device=dev),
                "labels": torch.tensor([1], device=dev)}] * args.batch

    def step(keyed: bool) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if keyed:
            with sample_noise(list(range(args.batch))):
                loss = sum(model(images, targets).values())
        else:
            loss = sum(model(images, targets).values())
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for keyed in (False, True):
            times[keyed].append(step(keyed))
    a, b = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.device}, {args.size} px, batch {args.batch}: global RNG {1000 * a:.0f} ms/step, "
          f"sample-keyed {1000 * b:.0f} ms/step, ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
