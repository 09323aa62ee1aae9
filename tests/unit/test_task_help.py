"""`invoke <task> --help` works for every task, and every task documents itself and its arguments."""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgefleet.tasks._errors import exits_on_user_error

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'payload'}"}


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=60)


def _names(tree: dict, prefix: str = "") -> list[str]:
    """Return the dotted task names of `invoke --list --list-format=json`'s tree."""
    names = [prefix + task["name"] for task in tree["tasks"]]
    for sub in tree["collections"]:
        names += _names(sub, f"{prefix}{sub['name']}.")
    return names


def listed_tasks() -> list[str]:
    listing = invoke("--list", "--list-format=json")
    assert listing.returncode == 0, listing.stderr
    return _names(json.loads(listing.stdout))


def the_collection():
    sys.path.insert(0, str(REPO))
    try:
        import tasks
    finally:
        sys.path.remove(str(REPO))
    return tasks.ns


def flat_tasks(collection, prefix: str = "") -> dict:
    """Return {dotted name: Task} for a collection and its sub-collections."""
    found = {prefix + name: task for name, task in collection.tasks.items()}
    for name, sub in collection.collections.items():
        found.update(flat_tasks(sub, f"{prefix}{name}."))
    return found


def arguments(task) -> list[str]:
    """Return a task's argument names as `help=` keys them (no context, no trailing underscore)."""
    return [name.rstrip("_") for name in list(inspect.signature(task.body).parameters)[1:]]


def test_every_listed_task_answers_help():
    names = listed_tasks()
    assert {"deploy", "render", "rollout", "status", "lab.fault", "lab.heat", "check"} <= set(names)
    with ThreadPoolExecutor(4) as pool:  # each call is a fresh interpreter: start them side by side
        answers = dict(zip(names, pool.map(lambda name: invoke(name, "--help"), names), strict=True))
    tasks = flat_tasks(the_collection())
    for name, proc in answers.items():
        assert proc.returncode == 0, f"invoke {name} --help: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert f"Usage: inv[oke] [--core-opts] {name} " in proc.stdout, proc.stdout
        summary = inspect.getdoc(tasks[name].body).splitlines()[0]
        assert summary in proc.stdout.replace("\n  ", " "), f"{name}: help does not show its docstring"
        for arg in arguments(tasks[name]):
            flag = arg.replace("_", "-")
            shown = f"--{flag}" in proc.stdout or f"--[no-]{flag}" in proc.stdout  # a flag that defaults to True
            assert shown, f"{name}: --help does not show --{flag}"


@pytest.mark.parametrize("name, task", sorted(flat_tasks(the_collection()).items()))
def test_no_argument_takes_the_help_flag(name, task):
    """`invoke <task> -h` is help: no argument may get -h as its short flag (tune's --threads did,
    beside --target, and so did model.check's)."""
    probe = copy.copy(task)
    probe.help = dict(task.help)  # get_arguments() pops the help it uses
    taken = [arg.name for arg in probe.get_arguments() if "h" in arg.names]
    assert not taken, f"invoke {name} -h would set --{taken[0]}, not print help"


@pytest.mark.parametrize("name, task", sorted(flat_tasks(the_collection()).items()))
def test_task_documents_itself(name, task):
    doc = inspect.getdoc(task.body) or ""
    summary = doc.split("\n\n")[0]
    assert summary and "\n" not in summary, f"{name}: the docstring needs a one-line summary"
    undocumented = [arg for arg in arguments(task) if arg not in task.help and arg + "_" not in task.help]
    assert not undocumented, f"{name}: no help= for {', '.join(undocumented)}"


@pytest.mark.parametrize("name, task", sorted(flat_tasks(the_collection()).items()))
def test_task_exits_cleanly_on_user_errors(name, task):
    """Every body is wrapped: an EdgefleetError ends it with its exit code, not a traceback."""
    assert task.body.__code__ is exits_on_user_error(print).__code__, f"{name}: add @exits_on_user_error"
