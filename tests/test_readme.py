"""The README's two commands are what CI proves: .ci/run must run the README's test command verbatim."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_command():
    commands = readme_commands()
    assert len(commands) == 2
    main_command, test_command = commands
    assert "napari-uad" in main_command and "pytest" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_runs_the_demo_on_the_bundled_sample():
    assert readme_commands()[0].endswith("napari-uad demo")
    assert (REPO / "sample_data" / "sample_brain.nii.gz").is_file()
