"""CPU threads: the user's choice, else OMP_NUM_THREADS, else the cores free of other work."""

from __future__ import annotations

import psutil
import pytest
import torch

from gpt_oss.training import runtime


def test_an_explicit_thread_count_wins_over_the_environment():
    assert runtime.choose_threads(3, {"OMP_NUM_THREADS": "1"}) == (3, "trainer.threads")


def test_omp_num_threads_wins_over_the_automatic_choice():
    assert runtime.choose_threads(0, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")


def test_automatic_choice_leaves_out_the_cores_other_processes_keep_busy(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(psutil, "cpu_count", lambda: 2)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 50.0)  # one of two cores busy
    assert runtime.choose_threads(0, {}) == (1, "1 of 2 cores free of other work")
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 3.0)  # idle
    assert runtime.choose_threads(0, {})[0] == 2
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 100.0)  # all busy: still one
    assert runtime.choose_threads(0, {})[0] == 1


def test_the_real_measurement_stays_within_the_usable_cores():
    usable, free = runtime.free_cores(sample_s=0.05)
    assert 1 <= free <= usable


def test_set_cpu_threads_applies_the_choice():
    before = torch.get_num_threads()
    try:
        assert runtime.set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_step_estimate_scales_with_the_tokens_of_a_step():
    from gpt_oss.model.config import ModelConfig
    from gpt_oss.training.metrics import cpu_step_estimate

    config = ModelConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=2,
        experts_per_token=1,
        sliding_window=8,
        max_position_embeddings=128,
    )
    small_s, small_bytes = cpu_step_estimate(config, 2, 64)
    large_s, large_bytes = cpu_step_estimate(config, 4, 64)  # the matmul probe is cached: same rate
    assert small_s > 0 and large_s == pytest.approx(2 * small_s)
    assert large_bytes > small_bytes > 0
