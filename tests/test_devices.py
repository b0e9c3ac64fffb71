"""Device slots of parallel fold processes (cv.max_parallel): planning, environment, hand-out."""

from __future__ import annotations

import threading
import time

import pytest

from pref_core.train.devices import (
    DEVICE_SLOT_ENV,
    DeviceSlots,
    plan_device_slots,
    slot_environment,
    visible_cuda_devices,
)


def test_one_slot_per_visible_gpu_by_default():
    assert plan_device_slots(None, cuda_devices=["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert plan_device_slots(2, cuda_devices=["0", "1", "2", "3"]) == ["0", "1"]
    # A user who pinned the run to GPUs 2 and 5 keeps the folds on those.
    assert plan_device_slots(None, cuda_devices=["2", "5"]) == ["2", "5"]


def test_cpu_slots_without_gpus():
    assert plan_device_slots(None, cuda_devices=[]) == ["cpu:0"]
    assert plan_device_slots(3, cuda_devices=[]) == ["cpu:0", "cpu:1", "cpu:2"]


def test_more_parallel_folds_than_gpus_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"cv.max_parallel=3 .*only 2 CUDA device\(s\).*at most 2"):
        plan_device_slots(3, cuda_devices=["0", "1"])


def test_cuda_visible_devices_is_respected(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert visible_cuda_devices() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_cuda_devices() == []


def test_slot_environment_pins_the_gpu_and_names_the_slot():
    assert slot_environment("3") == {"CUDA_VISIBLE_DEVICES": "3", DEVICE_SLOT_ENV: "3"}
    assert slot_environment("cpu:1") == {DEVICE_SLOT_ENV: "cpu:1"}  # no GPU to pin on a CPU machine


def test_a_taken_slot_is_not_handed_out_again_until_it_is_returned():
    slots = DeviceSlots(["0", "1"])
    held, events = [], []

    def worker(name):
        with slots.take() as slot:
            held.append(slot)
            events.append((name, "start", slot))
            time.sleep(0.05)
            assert held.count(slot) == 1  # nobody else holds this slot now
            held.remove(slot)
            events.append((name, "end", slot))

    threads = [threading.Thread(target=worker, args=(f"fold-{k}",)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e[2] for e in events if e[1] == "start") in (["0", "0", "0", "1", "1"], ["0", "0", "1", "1", "1"])
    assert not held


def test_folds_of_several_processes_get_groups_of_gpus():
    eight = [str(i) for i in range(8)]
    assert plan_device_slots(None, 2, cuda_devices=eight) == ["0,1", "2,3", "4,5", "6,7"]  # 4 folds x 2 GPUs
    assert plan_device_slots(2, 2, cuda_devices=eight) == ["0,1", "2,3"]
    assert plan_device_slots(None, 3, cuda_devices=eight) == ["0,1,2", "3,4,5"]
    assert slot_environment("2,3") == {"CUDA_VISIBLE_DEVICES": "2,3", DEVICE_SLOT_ENV: "2,3"}
    with pytest.raises(ValueError, match="needs 10 GPUs"):
        plan_device_slots(5, 2, cuda_devices=eight)
    with pytest.raises(ValueError, match="train.num_processes=4 but only 2"):
        plan_device_slots(None, 4, cuda_devices=["0", "1"])
