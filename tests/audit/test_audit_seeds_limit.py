"""``AuditConfig.seeds`` (``skprotect audit --seeds``) is bounded by ``MAX_SEEDS``: 10**12 was
accepted and, after the victim's training, built a list of a trillion seeds (MemoryError);
10**6 would have run for ever."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from skprotect_pytorch.audit import AuditConfig
from skprotect_pytorch.audit.arguments import MAX_SEEDS
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import InvalidArgumentError


@pytest.mark.parametrize("seeds", [MAX_SEEDS + 1, 10**12, np.int64(10**6)])
def test_more_seeds_than_the_bound_are_refused_before_any_training(seeds):
    with pytest.raises(
        InvalidArgumentError,
        match=rf"AuditConfig\.seeds must be at most 100, but is {int(seeds)}: .* give 1 to 100, "
        r"or None for the default",
    ):
        AuditConfig(seeds=seeds)


@pytest.mark.parametrize("seeds", [1, MAX_SEEDS, np.int16(3)])
def test_a_seed_count_in_range_is_taken_as_a_python_int(seeds):
    got = AuditConfig(seeds=seeds).seeds
    assert got == seeds and type(got) is int


@pytest.mark.parametrize("seeds", [MAX_SEEDS + 1, 10**12])
def test_the_cli_refuses_too_many_seeds_naming_its_option(seeds: int):
    result = CliRunner().invoke(app, ["audit", "--quick", "--seeds", str(seeds)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--seeds'" in result.output  # not AuditConfig's field name
    assert f"less than or equal to {MAX_SEEDS}" in result.output
