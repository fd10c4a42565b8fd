import pytest
from tasks import actions
from tasks.engine.reports import Report

@pytest.mark.django_db(transaction=True)
def test_smoke(make_agent, spec, operator, frozen_clock):
    a = make_agent("a1")
    job, created = actions.submit_job(spec(), operator)
    assert created and job.tasks_total == 1
    got = actions.claim_tasks("a1", 10)
    assert len(got) == 1
    out = actions.report("a1", Report("succeeded", got[0].task_id, got[0].attempt, message_id="m1", result={"x": 1}))
    assert out.status == "applied"
    job.refresh_from_db()
    assert job.state == "succeeded", job.state
