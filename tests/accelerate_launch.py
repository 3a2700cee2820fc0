"""Start a test entry script under `accelerate launch` with gloo processes on the CPU, as the
multi-process tests (tests/test_accelerate_*.py) do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def launch(script: Path, args: list[str], port: int, processes: int = 2, timeout: float = 1800) -> str:
    """Run `script args` in `processes` workers; returns their output, fails the test on a
    non-zero exit. accelerate 1.15's --cpu starts one process (multi-CPU needs mpirun);
    --multi_gpu starts torchrun workers, which the runtime joins on gloo since the run's device
    is cpu. Each test takes its own rendezvous `port`; `timeout` leaves room for a shared,
    saturated machine (a run of seconds took over 10 minutes on one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(script), *args]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the workers too, not only the launcher
        raise
    assert launcher.returncode == 0, output[-3000:]
    return output
