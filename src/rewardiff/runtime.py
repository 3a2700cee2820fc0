"""The trainers' one run-time: processes (accelerate), device, mixed precision, gradient
reduction and statistics gathered across processes.

Under `accelerate launch` (one process per GPU, or gloo processes on a CPU) every trainer sees
the same `Runtime`: accelerate's `PartialState` joins the process group and names this process's
device; a plain `python` run is one process and nothing changes. What each part does:

- **data**: trainers draw the global batch (prompts, seeds, indices) from their seeded RNGs as
  one process would, and each process takes its `shard`; so per-image seeds, and the samples,
  do not depend on the number of processes;
- **gradients**: every LoRA gradient is summed (or averaged) over processes in one flat
  all-reduce just before the optimiser step (`step`). This is what DDP's hooks do, done once per
  step: the trainers call the U-Net through the shared sampler and accumulate text-encoder
  gradients on leaves, where DDP would need a wrapped module and `no_sync` around every
  backward. Every process then takes the same optimiser step and holds the same LoRA;
- **mixed precision**: `autocast()` runs the forward passes in bf16 or fp16 (torch.autocast, as
  accelerate's own `autocast` does) while the LoRA master weights and the optimiser stay fp32;
  fp16 adds a `torch.amp.GradScaler` (unscaled after the all-reduce, before clipping);
- **lists of work** (scoring, judging, embedding a data set): `map_parts` gives each process a
  contiguous part of the list in whole batches and every process the whole result in order;
- `allow_tf32` switches TF32 matmuls / convolutions on (CUDA; no effect on a CPU).

accelerate's `Accelerator` object is not used: its state is a process-wide singleton whose
mixed-precision setting cannot change within one process, and tests (and the self-reward loop)
run several trainers with different settings in one process.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from rewardiff.errors import RewardiffError

PRECISIONS = ("no", "bf16", "fp16")
"""mixed_precision values: no (weights' dtype), bf16, fp16 (with a gradient scaler)."""


def check_precision(mixed_precision: str, device: str) -> None:
    if mixed_precision not in PRECISIONS:
        raise RewardiffError(f"mixed_precision must be one of {PRECISIONS}, got {mixed_precision!r}")
    if mixed_precision == "fp16" and str(device).startswith("mps"):
        raise RewardiffError("mixed_precision fp16 is not supported on mps; use bf16 or no")


class Runtime:
    """One process's view of a (possibly multi-process) training run."""

    def __init__(self, device: str = "cpu", mixed_precision: str = "no", allow_tf32: bool = False):
        from accelerate import PartialState

        check_precision(mixed_precision, device)
        self.state = PartialState(cpu=str(device).startswith("cpu"))
        self.mixed_precision = mixed_precision
        self.device = self._process_device(str(device))
        if allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.scaler = torch.amp.GradScaler(self.device.type) if mixed_precision == "fp16" else None

    def _process_device(self, device: str) -> torch.device:
        """cuda / cuda:N with several processes -> this process's GPU (accelerate's choice)."""
        if self.num_processes > 1 and device.startswith("cuda"):
            return self.state.device
        return torch.device(device)

    @property
    def num_processes(self) -> int:
        return int(self.state.num_processes)

    @property
    def process_index(self) -> int:
        return int(self.state.process_index)

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_main_process)

    def shard(self, n: int, what: str = "items") -> slice:
        """This process's contiguous part of n global items; n must split evenly (each process
        then averages over equally many, and a gathered tensor is the global one, in order)."""
        if n % self.num_processes:
            raise RewardiffError(f"{n} {what} do not split evenly over {self.num_processes} processes; "
                                 f"make it a multiple of {self.num_processes}")
        per = n // self.num_processes
        return slice(self.process_index * per, (self.process_index + 1) * per)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward passes' precision (fp32 LoRA weights, bf16/fp16 matmuls)."""
        if self.mixed_precision == "no":
            yield
            return
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled under fp16 (gradients pushed on through leaves stay scaled)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def reduce_gradients(self, params: list[torch.nn.Parameter], op: str = "mean") -> None:
        """Sum or average the gradients over processes in one flat all-reduce (a no-op alone).
        A parameter without a gradient on some process counts as zeros there."""
        if self.num_processes == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if op == "mean":
            flat /= self.num_processes
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def step(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float,
             reduce: str = "mean") -> float:
        """All-reduce, unscale (fp16), clip to max_grad_norm (0 = off), step, zero; returns the
        gradient norm before clipping (inf/NaN under fp16 when the scaler skips the step)."""
        self.reduce_gradients(params, reduce)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            norms = [p.grad.norm() for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's tensor (dim 0) in process order (the global batch)."""
        if self.num_processes == 1:
            return tensor
        from accelerate.utils import gather

        return gather(tensor.to(self.state.device)).to(tensor.device)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of scalars over processes (statistics)."""
        if self.num_processes == 1:
            return list(values)
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.float64, device=self.state.device), "sum").tolist()

    def gather_objects(self, value: object) -> list:
        """Every process's `value` (picklable: rows, counts), in process order, on every process."""
        if self.num_processes == 1:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.num_processes
        dist.all_gather_object(out, value)
        return out

    def map_parts(self, fn: Callable[[list], list], items: Sequence, chunk: int = 1) -> list:
        """fn over the whole list, shared out: each process calls fn on its contiguous part and
        every process gets the parts' results concatenated in the list's order. Parts hold whole
        chunks of `chunk` items (a caller's batches, so each batch is the batch one process makes
        and batch-dependent floats do not change) and may be uneven; a process whose part is
        empty does not call fn. One process: fn(items), unchanged."""
        if self.num_processes == 1:
            return fn(list(items))
        part = self.part(len(items), chunk)
        mine = fn(list(items[part])) if part.stop > part.start else []
        return [value for values in self.gather_objects(list(mine)) for value in values]

    def part(self, n: int, chunk: int = 1) -> slice:
        """This process's contiguous part of n items in whole chunks, split as evenly as the
        chunks allow (unlike `shard`, any n: the first processes may get one chunk less)."""
        if chunk < 1:
            raise RewardiffError(f"chunk must be at least 1, got {chunk}")
        chunks = -(-n // chunk)
        first = chunks * self.process_index // self.num_processes
        last = chunks * (self.process_index + 1) // self.num_processes
        return slice(min(first * chunk, n), min(last * chunk, n))

    def wait(self) -> None:
        """A barrier: what one process wrote before it, the others can read after it."""
        self.state.wait_for_everyone()


def process_device(device: str) -> str:
    """Where this process loads its models: under `accelerate launch` with cuda, its own GPU
    (so eight processes do not all load onto GPU 0 first); otherwise `device` as given."""
    import os

    if str(device).startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return str(Runtime(device).device)
    return str(device)


def is_main_process() -> bool:
    """Whether this process prints the summary and writes the report: the only one of a plain
    run, rank 0 of an `accelerate launch` (torchrun sets RANK), so N processes do not race on
    one report folder."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def enable_gradient_checkpointing(modules: list) -> None:
    """Recompute activations in backward (memory for time) on U-Nets (diffusers) and text
    encoders (transformers); LoRA inputs keep their grad through peft's layers."""
    for m in modules:
        if m is None:
            continue
        if hasattr(m, "enable_gradient_checkpointing"):
            m.enable_gradient_checkpointing()
        elif hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
