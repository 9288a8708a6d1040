"""How far apart are two windows of identical work on this machine? (a benchmark script)

    .venv/bin/python benchmarks/gate/pair_noise.py [--rounds 30] [--model DIR]

Two processes, each pinned to its own core with one torch thread, run the gate benchmark's
workload (a GPT-2-shaped checkpoint, 8 blocks of width 128; 4 prompts x 32 new tokens, two
passes, about 1 s) in windows, in two arrangements taken in alternation:

- alternating: one process's window, then the other's, the other idle (what A/B does);
- concurrent: both windows at once, started together (a barrier).

Prints, per arrangement, the spread of the pairs' log ratio (MAD x 1.4826, robust to the odd
wild pair), its median and the spread of one process's windows. The A/B gate's resolution
follows from the pair spread: docs/gate.md turns it into pairs needed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from multiprocessing import Barrier, Process, Queue
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import multiprocessing.queues
    import multiprocessing.synchronize

# what a worker puts on the results queue: its core, the arrangement and one window's seconds
Window = tuple[int, str, float]

PASSES = 2


def _window_times(
    core: int,
    model_dir: str,
    modes: list[str],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[Window],
) -> None:
    os.sched_setaffinity(0, {core})
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # typed as transformers types its loaded models elsewhere (pytest_llem.engines): their
    # eval() and generate() are untyped
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    prompts = [tokenizer(f"a prompt number {i} for timing", return_tensors="pt") for i in range(4)]

    @torch.inference_mode()
    def one_pass() -> None:
        for prompt in prompts:
            model.generate(
                **prompt,
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )

    def window() -> float:
        start = time.perf_counter()
        for _ in range(PASSES):
            one_pass()
        return time.perf_counter() - start

    for _ in range(3):
        one_pass()
    for mode in modes:
        if mode == "concurrent":
            barrier.wait()
            results.put((core, mode, window()))
            barrier.wait()
            continue
        for turn in (0, 1):  # core 0's window, then core 1's
            barrier.wait()
            if turn == core:
                results.put((core, mode, window()))
            barrier.wait()


def _spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - middle) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30, help="pairs per arrangement (default 30)")
    parser.add_argument("--model", help="a checkpoint directory (default: build the gate benchmark's)")
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        from pytest_llem.testing.checkpoints import build_block_model

        model_dir = str(Path(tempfile.mkdtemp(prefix="llem-pair-noise-")) / "model")
        build_block_model(Path(model_dir), layers=8, width=128, inner=512)
    modes = ["concurrent" if i % 2 == 0 else "alternating" for i in range(2 * args.rounds)]
    barrier = Barrier(2)
    results: multiprocessing.queues.Queue[Window] = Queue()
    workers = [
        Process(target=_window_times, args=(core, model_dir, modes, barrier, results)) for core in (0, 1)
    ]
    for worker in workers:
        worker.start()
    times: dict[str, dict[int, list[float]]] = {m: {0: [], 1: []} for m in ("alternating", "concurrent")}
    for _ in range(2 * len(modes)):
        core, mode, seconds = results.get(timeout=600)
        times[mode][core].append(seconds)
    for worker in workers:
        worker.join()
    for mode, by_core in times.items():
        logs = [math.log(b / a) for a, b in zip(by_core[0], by_core[1], strict=True)]
        print(
            f"{mode}: {len(logs)} pairs, pair spread {100 * _spread(logs):.1f}%, "
            f"median ratio {100 * statistics.median(logs):+.1f}%, "
            f"window spread {100 * _spread([math.log(t) for t in by_core[0]]):.1f}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
