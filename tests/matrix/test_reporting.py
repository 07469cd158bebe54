"""How busy the machine is: other processes' CPU use and other torch processes are seen and recorded."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hf_backdoor_defense.reporting import MachineMonitor, PeakMemory, machine_state, prepare_machine


def test_another_busy_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
    try:
        time.sleep(0.5)
        state = machine_state(window=1.5)
    finally:
        spinner.wait()
    assert state["other_cpu_cores"] >= 0.5 and state["busy"]
    assert "_snapshot" in state and state["cpus_usable"] >= 1


def test_another_torch_process_is_named_and_the_monitor_records_it():
    import torch

    messages: list[str] = []
    threads = torch.get_num_threads()
    child = subprocess.Popen([sys.executable, "-c", "import torch, time; print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with MachineMonitor(interval=0.2) as monitor:
            time.sleep(0.5)
        summary = monitor.summary()
        assert summary["busy"] and summary["samples"] >= 3
        assert child.pid in {p["pid"] for p in summary["other_torch_processes"]}
        state = prepare_machine(1, log=messages.append)
    finally:
        child.kill()
        child.wait()
        torch.set_num_threads(threads)
    assert state["torch_threads"] == 1 and state["busy"] and "WARNING: the machine is busy" in messages[0]



def test_markdown_table_aligns_and_rejects_a_wrong_alignment():
    from hf_backdoor_defense.reporting import markdown_table, percent

    table = markdown_table(["run", "CACC", "ASR"], [["lora", percent(0.7246), percent(None)]], align="lcr")
    assert table.split("\n") == ["| run | CACC | ASR |", "|---|:---:|---:|", "| lora | 72.5% | - |"]
    with pytest.raises(ValueError, match="`align`"):
        markdown_table(["a", "b"], [], align="l")


def test_peak_memory_sees_a_block_that_holds_a_large_buffer():
    with PeakMemory() as peak:
        buffer = bytearray(64 * 2**20)  # 64 MiB, touched page by page
        for i in range(0, len(buffer), 4096):
            buffer[i] = 1
        time.sleep(0.05)
        del buffer
    assert peak.extra is not None and peak.extra >= 48 * 2**20
    with PeakMemory() as idle:
        time.sleep(0.02)
    assert idle.extra is not None and idle.extra < 16 * 2**20
