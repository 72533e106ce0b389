from driver.errors import CommandError, CommandTimedOut, ConfigError, DriverError, tail


def test_a_command_error_carries_command_code_and_the_output_tail() -> None:
    output = "\n".join(f"line {i}" for i in range(50))
    e = CommandError(["docker-machine", "create", "x"], 3, output, message="create")
    text = str(e)
    assert e.exit_code == 3
    assert e.command == ["docker-machine", "create", "x"]
    assert "create failed (exit code 3)" in text
    assert "line 49" in text and "line 29" not in text


def test_timeouts_say_how_long_they_waited() -> None:
    e = CommandTimedOut(["ssh", "x"], 12.5, "partial output", message="ssh x")
    assert "ssh x did not finish within 12.5s and was stopped" in str(e)
    assert "partial output" in str(e)
    assert isinstance(e, DriverError)


def test_hints_follow_the_message() -> None:
    assert str(ConfigError("bad", hint="fix it")) == "bad\n  hint: fix it"


def test_tail_keeps_the_last_lines() -> None:
    assert tail("a\nb\nc\n", 2) == "b\nc"
