"""The options every command shares (where it runs, --dry-run, --verbose, --json, the S3 endpoint) are
declared once, in `cli/app.py`, and reach each command as one `Common` argument."""

import ast
import typing
from pathlib import Path

import click
import typer

from simgan_ray.cli import app
from simgan_ray.cli.app import SHARED_OPTIONS

CLI = Path(__file__).parents[2] / "simgan_ray" / "cli"


def _commands(group: click.Group):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command)
        else:
            yield name, command


def test_every_command_shows_the_one_declaration_of_each_shared_option():
    seen = set()
    for name, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if param.name in SHARED_OPTIONS:
                declared = typing.get_args(SHARED_OPTIONS[param.name])[1]
                assert param.help == declared.help, f"{name} --{param.name}"
                seen.add(param.name)
        names = [p.name for p in command.params]
        assert "common" not in names, name
        assert names[-len([n for n in names if n in SHARED_OPTIONS]):] == [n for n in names if n in SHARED_OPTIONS], (
            f"{name}: the shared options come after the command's own")
    assert seen == set(SHARED_OPTIONS)  # every declaration is used


def test_no_command_module_declares_a_shared_option_itself():
    for path in sorted(CLI.glob("*.py")):
        if path.name == "app.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                own = {a.arg for a in node.args.args + node.args.kwonlyargs} & set(SHARED_OPTIONS)
                assert not own, f"{path.name}:{node.lineno} {node.name} declares {sorted(own)}"
