"""Fidelity metrics against closed forms, and the ``fedattn model`` command."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedattn.attention.fidelity import exact_match, mean_kl, top1_agreement
from fedattn.attention.gguf_model import default_model_path
from fedattn.cli import main


def test_kl_matches_closed_form():
    # p = (1/2, 1/2), q = (3/4, 1/4): KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    ref = np.array([[0.0, 0.0], [1.0, 1.0]])
    run = np.array([[math.log(3.0), 0.0], [1.0, 1.0]])
    assert mean_kl(ref, run) == pytest.approx(0.25 * math.log(4.0 / 3.0), rel=1e-12)
    assert mean_kl(ref, ref) == 0.0
    # invariant to adding a constant per row (logits, not probabilities)
    assert mean_kl(ref + 5.0, run - 2.0) == pytest.approx(mean_kl(ref, run), rel=1e-12)


def test_top1_agreement_and_exact_match():
    ref = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    run = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 1.0]])
    assert top1_agreement(ref, run) == 0.5
    assert exact_match([1, 2, 3], [1, 2, 3]) and not exact_match([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="shapes"):
        top1_agreement(ref, run[:2])


def test_model_path_command_prints_the_installed_gguf(capsys):
    assert main(["model", "path", "--no-install"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(default_model_path()) and printed.endswith(".gguf")
