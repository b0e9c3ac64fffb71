"""What the user sees: a quiet console (bars and a summary, ~40 lines for the demo), everything else in
a log file; the registry decision in plain words."""

from __future__ import annotations

from pathlib import Path

from arena_pref import cli

ROOT = Path(__file__).resolve().parents[1]


def test_registry_decision_reads_as_success_for_the_first_version():
    from arena_pref.summary import registry_decision
    from arena_pref.tasks.registry import RegistrationOutput

    first = RegistrationOutput("arena-pref", "1", "models:/arena-pref/1", promoted=True, reason="no champion yet")
    assert registry_decision(first) == "models:/arena-pref/1 is now @champion (the first version registered)"
    kept = RegistrationOutput(
        "arena-pref",
        "2",
        "models:/arena-pref/2",
        promoted=False,
        reason="oof_log_loss 1.10000 does not beat champion v1 (1.00000)",
    )
    assert registry_decision(kept).startswith("models:/arena-pref/2 is @challenger, @champion unchanged: ")


def test_demo_console_is_quiet_with_progress_and_summary(prefect_harness, tmp_path, capfd):
    out = tmp_path / "demo"
    code = cli.main(
        [
            "demo",
            "--output-dir",
            str(out),
            "--n-train",
            "120",
            "--n-test",
            "20",
            "--set",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "--set",
            "cv.execution=in_process",
            "--set",
            "cv.n_folds=2",
            "--set",
            "train.num_epochs=1",
            "--set",
            "train.save_steps=1000",
        ]
    )
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert code == 0, console
    lines = console.splitlines()  # a bar redraws with \r inside its one line
    assert len(lines) <= 40, console
    for needle in (
        "fold 0:",
        "fold 1:",
        "step/s",
        "tok/s",
        "predict 20 rows",
        "tokenize train: 120 rows",
        "fold  log loss  accuracy",
        "OOF log loss",
        "class prior log loss",
        "registry: models:/arena-pref/1 ",  # @champion, or without an alias when this tiny run misses the prior
        "submission: ",
        "report page: ",
        "OOF predictions: ",
        "arena-pref ui",
    ):
        assert needle in console, f"{needle!r} missing from:\n{console}"
    for noise in ("Warning", "INFO", "Downloading artifacts", "Loading weights", "Traceback"):
        assert noise not in console, f"{noise!r} reached the console:\n{console}"
    log_lines = [line for line in lines if line.startswith("log: ")]
    assert len(log_lines) == 1
    log_path = Path(log_lines[0].split()[1])
    log_text = log_path.read_text()
    assert log_path.parent == out / "logs"
    # Library logs went to the file (Prefect's states too when its handler writes to the process's stderr,
    # as in `arena-pref train`; under pytest that handler writes to pytest's capture instead).
    assert "mlflow" in log_text
