"""2-process DDP on CPU (gloo) gives the same aligned updates as 1 process with the same global batch.

Alignment is non-linear in the gradients, so this only holds if both the training gradient and the reference
gradient are averaged across processes before the per-tensor projection, and if the two processes' reference
shards together form the 1-process reference batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "ddp" / "alignment_worker.py"
BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.ddp
def test_two_process_ddp_matches_single_process(tmp_path):
    accelerate = BIN / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed in this environment")
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--output_dir",
            str(single_dir),
            "--per_device_train_batch_size",
            "8",
            "--reference_batch_size",
            "8",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ddp = subprocess.Popen(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            str(WORKER),
            "--output_dir",
            str(ddp_dir),
            "--per_device_train_batch_size",
            "4",
            "--reference_batch_size",
            "4",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out_single, _ = single.communicate(timeout=540)
    out_ddp, _ = ddp.communicate(timeout=540)
    assert single.returncode == 0, out_single[-3000:]
    assert ddp.returncode == 0, out_ddp[-3000:]

    info_single = json.loads((single_dir / "alignment.json").read_text())
    info_ddp = json.loads((ddp_dir / "alignment.json").read_text())
    assert info_single["world_size"] == 1 and info_ddp["world_size"] == 2
    assert len(info_ddp["history"]) == len(info_single["history"]) == 3
    for a, b in zip(info_single["history"], info_ddp["history"]):
        assert a["reference_loss"] == pytest.approx(b["reference_loss"], abs=1e-5)
        assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-4)
        assert a["projection_tensors"] == b["projection_tensors"] == 10

    w_single = load_file(single_dir / "trainable.safetensors")
    w_ddp = load_file(ddp_dir / "trainable.safetensors")
    assert w_single.keys() == w_ddp.keys()
    # the weights moved far more than the tolerance, so the equality below is not trivial
    initial = load_file(single_dir / "initial.safetensors")
    assert max((w_single[k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    for name in w_single:
        torch.testing.assert_close(w_single[name], w_ddp[name], atol=1e-5, rtol=1e-4, msg=name)
