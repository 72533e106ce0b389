import json
from pathlib import Path

import pytest

from driver import contract, payload
from driver.errors import JobError


def write(tmp_path: Path, payload: object) -> str:
    path = tmp_path / "response.json"
    path.write_text(json.dumps(payload))
    return str(path)


def test_identity_comes_from_the_response_file_not_job_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOM_ENV_CI_JOB_ID", "999")
    monkeypatch.setenv("CUSTOM_ENV_CI_PROJECT_ID", "999")
    path = write(
        tmp_path,
        {
            "id": 1234,
            "token": "secret",
            "job_info": {"project_id": 77, "name": "build", "stage": "compile"},
            "variables": [
                {"key": "CI_PIPELINE_ID", "value": "55"},
                {"key": "CI_JOB_ID", "value": "999"},
            ],
        },
    )
    monkeypatch.setenv("JOB_RESPONSE_FILE", path)
    assert contract.read_job() == payload.Job(
        id=1234, project_id=77, pipeline_id=55, name="build", stage="compile"
    )


def test_a_missing_environment_variable_says_how_to_run_by_hand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOB_RESPONSE_FILE", raising=False)
    with pytest.raises(JobError, match="JOB_RESPONSE_FILE is not set"):
        contract.read_job()


@pytest.mark.parametrize(
    "payload",
    [{"id": "x", "job_info": {"project_id": 1}}, {"job_info": {"project_id": 1}}, [], {"id": -1}],
)
def test_a_file_that_is_not_a_job_is_refused(tmp_path: Path, payload: object) -> None:
    with pytest.raises(JobError, match="is not a job payload"):
        contract.read_job(write(tmp_path, payload))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read"):
        contract.read_job(str(tmp_path / "missing.json"))
