"""The xdist grouping of tests/conftest.py: files sharing an expensive fixture land in one group, named alike on
every worker (workers whose collections differ abort the run)."""

from tests.conftest import worker_groups


def test_files_sharing_a_run_are_grouped_and_named_alike_in_any_order():
    files = {
        "tests/a.py": {"tmp_path", "trained_stage2"},
        "tests/b.py": {"weak_image_policy", "trained_stage2"},
        "tests/c.py": {"weak_image_policy"},
        "tests/d.py": {"tmp_path"},
        "tests/pipeline.py": {"pipeline_run"},
    }
    groups = worker_groups(files)
    assert groups["tests/a.py"] == groups["tests/b.py"] == groups["tests/c.py"] == "tests/a.py"
    assert groups["tests/d.py"] == "tests/d.py" and groups["tests/pipeline.py"] == "pipeline_run"
    assert worker_groups(dict(reversed(files.items()))) == groups
