"""Every command the docs tell an admin to type exists, with its flags.

The shell lines of the ```sh blocks in README.md and docs/*.md are split into
simple commands (never run) and checked:

- `gitlab-machine-driver [--config PATH] COMMAND [ACTION] [--flags] [ARGS]`: walked
  through the real argparse parser of driver/main.py, subcommand by subcommand;
- `make TARGET`: a target of the Makefile;
- `systemctl ... gitlab-machine-driver-*`: a unit file in packaging/systemd/, and a
  template unit (`name@.service`) only with an instance (`name@config.service`).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.main import parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UNITS = ROOT / "packaging" / "systemd"
PROGRAM = "gitlab-machine-driver"
FENCE = re.compile(r"^```(?:sh|bash|shell)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# `<name>`, `<job id>`: a placeholder the reader fills in; it is one word.
PLACEHOLDER = re.compile(r"<[A-Za-z][\w .-]*>")
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}"}
REDIRECTS = {">", ">>", "<", "<<", ">&", "&>", "2>", "2>>"}
PREFIXES = {"sudo", "env", "eval", "exec", "time", "then", "do", "!"}


def shell_lines(text: str) -> Iterator[str]:
    """The lines of every ```sh block, continuation lines joined."""
    for block in FENCE.findall(text):
        yield from block.replace("\\\n", " ").splitlines()


def simple_commands(line: str) -> Iterator[list[str]]:
    """The words of each simple command on a line, `$(...)` ones included."""
    line = PLACEHOLDER.sub("PLACEHOLDER", line)
    for inner in SUBSTITUTION.findall(line):
        yield from simple_commands(inner)
    line = SUBSTITUTION.sub("SUBSTITUTION", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    skip = False
    for token in lexer:
        if skip:
            skip = False
        elif token in OPERATORS:
            yield from _command(words)
            words = []
        elif token in REDIRECTS:
            skip = True  # the redirection's target
        else:
            words.append(token)
    yield from _command(words)


def _command(words: list[str]) -> Iterator[list[str]]:
    while words and (words[0] in PREFIXES or re.match(r"^[A-Za-z_]\w*=", words[0])):
        words = words[1:]
    if words:
        yield words


def documented_commands() -> Iterator[tuple[str, list[str]]]:
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            for words in simple_commands(line):
                yield f"{page.relative_to(ROOT)}: {line.strip()}", words


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_driver_command(args: list[str]) -> list[str]:
    """What is wrong with `gitlab-machine-driver ARGS`, walking the real parser."""
    current, path = parser(), [PROGRAM]
    positionals = [
        a for a in current._actions if not a.option_strings and a.nargs != argparse.PARSER
    ]
    words = list(args)
    while words:
        word = words.pop(0)
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            action = current._option_string_actions.get(flag)
            if action is None:
                known = sorted(current._option_string_actions)
                return [f"`{' '.join(path)}` has no option {flag} (it has {', '.join(known)})"]
            if action.nargs != 0 and "=" not in word:
                if not words:
                    return [f"`{' '.join(path)} {flag}` needs a value"]
                words.pop(0)
            continue
        choices = subparsers(current)
        if choices:
            if word not in choices:
                return [
                    f"`{' '.join(path)}` has no command {word!r} "
                    f"(it has {', '.join(sorted(choices))})"
                ]
            current, path = choices[word], [*path, word]
            positionals = [
                a for a in current._actions if not a.option_strings and a.nargs != argparse.PARSER
            ]
            continue
        if not positionals:
            return [f"`{' '.join(path)}` takes no argument {word!r}"]
        if positionals[0].nargs == argparse.REMAINDER:
            return []  # `ssh JOB COMMAND...`: the rest is the remote command's
        positionals.pop(0)
    if subparsers(current):
        return [f"`{' '.join(path)}` needs one of: {', '.join(sorted(subparsers(current)))}"]
    missing = [a.metavar or a.dest for a in positionals if a.nargs not in ("?", "*", "...")]
    if missing:
        return [f"`{' '.join(path)}` needs {', '.join(map(str, missing))}"]
    return []


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))


def check_make(args: list[str]) -> list[str]:
    targets = make_targets()
    wanted = [a for a in args if not a.startswith("-") and "=" not in a]
    return [f"the Makefile has no target {t!r}" for t in wanted if t not in targets]


def check_systemctl(args: list[str]) -> list[str]:
    problems = []
    for unit in args:
        if not unit.startswith(f"{PROGRAM}-"):
            continue
        base, dot, kind = unit.rpartition(".")
        if not dot or kind not in ("service", "timer", "socket", "path"):
            base, kind = unit, "service"  # systemctl's own default
        name, at, instance = base.partition("@")
        if at:
            if not (UNITS / f"{name}@.{kind}").is_file():
                problems.append(f"no template unit {name}@.{kind} in packaging/systemd")
            elif not instance:
                problems.append(f"{unit}: a template unit needs an instance ({name}@config.{kind})")
        elif (UNITS / f"{name}.{kind}").is_file():
            pass
        elif (UNITS / f"{name}@.{kind}").is_file():
            problems.append(
                f"{unit} names the template {name}@.{kind} without an instance: "
                f"use {name}@NAME.{kind} for /etc/gitlab-machine-driver/NAME.toml"
            )
        else:
            problems.append(f"no unit {name}.{kind} in packaging/systemd")
    return problems


def check(words: list[str]) -> list[str]:
    program, args = Path(words[0]).name, words[1:]
    if program == PROGRAM:
        return check_driver_command(args)
    if program == "make":
        return check_make(args)
    if program == "systemctl":
        return check_systemctl(args)
    return []


def problems_in(text: str) -> list[str]:
    return [
        f"{line.strip()}: {problem}"
        for line in shell_lines(text)
        for words in simple_commands(line)
        for problem in check(words)
    ]


def test_every_documented_command_exists_with_its_flags() -> None:
    problems = [
        f"{where}\n    {problem}"
        for where, words in documented_commands()
        for problem in check(words)
    ]
    assert problems == [], "\n".join(problems)


def test_the_docs_have_commands_of_each_kind_to_check() -> None:
    programs = {Path(words[0]).name for _, words in documented_commands()}
    assert {PROGRAM, "make", "systemctl"} <= programs


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # The README's pool line before the docs site: a template unit without an instance.
        (
            "systemctl enable --now gitlab-machine-driver-pool   # or: gitlab-machine-driver "
            "pool run",
            "names the template gitlab-machine-driver-pool@.service without an instance",
        ),
        ("systemctl enable --now gitlab-machine-driver-sweep@.timer", "needs an instance"),
        ("systemctl start gitlab-machine-driver-reaper@x.timer", "no template unit"),
        ("gitlab-machine-driver pool stats", "has no command 'stats'"),
        ("gitlab-machine-driver sweep --dry", "has no option --dry"),
        ("gitlab-machine-driver migrate --aply config.toml", "has no option --aply"),
        ('eval "$(gitlab-machine-driver job start --id 1)"', "has no command 'start'"),
        ("gitlab-machine-driver pool", "needs one of: drain, replay, run, status"),
        ("gitlab-machine-driver migrate", "needs RUNNER_CONFIG_TOML"),
        ("gitlab-machine-driver ls extra", "takes no argument 'extra'"),
        ("make demo && make tset", "no target 'tset'"),
    ],
)
def test_the_check_finds_what_is_wrong(line: str, expected: str) -> None:
    problems = problems_in(f"```sh\n{line}\n```\n")
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    "line",
    [
        "systemctl enable --now gitlab-machine-driver-pool@config.service",
        "systemctl enable --now gitlab-machine-driver-sweep@<name>.timer",
        "gitlab-machine-driver --config /etc/gitlab-machine-driver/<name>.toml doctor",
        "gitlab-machine-driver doctor --config=/x.toml --project 3 --create",
        "gitlab-machine-driver ssh 1234 uname -a --all",
        'gitlab-machine-driver run stage.sh build_script; echo "exit $?"',
        "gitlab-machine-driver ls --json | head -3 > /tmp/machines",
        "sudo make demo",
    ],
)
def test_the_check_passes_what_is_right(line: str) -> None:
    assert problems_in(f"```sh\n{line}\n```\n") == []
