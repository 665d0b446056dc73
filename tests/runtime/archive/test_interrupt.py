"""Ctrl-C while usearch inserts vectors stays a KeyboardInterrupt (exit 130), not usearch's RuntimeError."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from vocalprobe.runtime.archive.vectors import add_vectors, index_keys, new_index, usearch_config


def test_ctrl_c_during_an_insert_is_a_keyboard_interrupt():
    index = new_index(usearch_config(64))
    vectors = np.random.default_rng(0).standard_normal((400_000, 64)).astype(np.float32)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):  # the signal lands while the insert runs (it takes seconds)
        timer.start()
        add_vectors(index, np.arange(len(vectors)), vectors)
    timer.join()


def test_an_uninterrupted_insert_adds_every_vector():
    index = new_index(usearch_config(8))
    add_vectors(index, np.arange(5), np.eye(5, 8, dtype=np.float32) + 0.1)
    assert sorted(index_keys(index).tolist()) == [0, 1, 2, 3, 4]
