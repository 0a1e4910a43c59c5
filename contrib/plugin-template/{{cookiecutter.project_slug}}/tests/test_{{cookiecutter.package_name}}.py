"""The {{ cookiecutter.job_name }} job, run through a real worker and broker."""

from __future__ import annotations

import pytest

from runner import JobFailed


def test_the_plugin_registers_its_job(runner_plugins):
    job = runner_plugins.jobs.get("{{ cookiecutter.job_name }}")
    assert job.plugin == "{{ cookiecutter.plugin_name }}"


def test_counts_words_through_a_worker(runner_client, runner_worker, tmp_path):
    # Given a text file
    text = tmp_path / "book.txt"
    text.write_text("The cat and the hat.\nThe end, and that's that.\n")
    # When the job runs on a worker
    handle = runner_client.submit("{{ cookiecutter.job_name }}", {"top": 2}, files={"text": text}, wait=True)
    result = handle.wait(timeout=60)
    # Then the value and the output file come back
    assert result.value == {"words": 10, "distinct": 7, "top": [["the", 3], ["and", 2]]}
    assert [(f.name, f.data) for f in result.outputs] == [("top.txt", b"3\tthe\n2\tand\n")]


def test_binary_input_fails_for_good(runner_client, runner_worker, tmp_path):
    blob = tmp_path / "image.bin"
    blob.write_bytes(b"\xff\xd8\xff\xe0 not text")
    handle = runner_client.submit("{{ cookiecutter.job_name }}", files={"text": blob}, wait=True)
    with pytest.raises(JobFailed, match="image.bin is not UTF-8 text") as failed:
        handle.wait(timeout=60)
    assert failed.value.result.attempts == 1  # Reject: no second attempt
