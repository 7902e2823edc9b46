"""The fault suite (migrator.faultsuite) as tests: one real migration per
fault on the lab, each asserting that the VM runs exactly once, the guest
kept running with its memory intact, nothing paused is left, and the record
is true. They run once, on PostgreSQL (scripts/test.sh deselects them on
SQLite), like the lab's own fault tests (tests/test_lab_faults.py): what
they prove does not depend on the database, except the PostgreSQL restart,
which only PostgreSQL has."""

from __future__ import annotations

import pytest

from migrator import faultsuite

pytestmark = [pytest.mark.lab, pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("case", faultsuite.CASES, ids=lambda case: case.name.replace(" ", "-"))
def test_the_vm_survives_the_fault_and_the_record_is_true(lab, lab_hosts, users, case):
    if case.postgresql_only and case not in faultsuite.cases():
        pytest.skip("the database is not PostgreSQL")
    a, b = lab_hosts
    row = faultsuite.run_case(lab, {"A": a, "B": b}, users["operator"], case)
    assert not row.vm_lost, row.problems
    assert not row.stuck, row.problems
    assert not row.wrong_record, row.problems
