"""Finds or makes a Python that can run client.py, and prints its path.

Usage: python3 bootstrap.py VENV_DIR

If the interpreter running this script imports everything requirements.txt lists, it prints its own
path. Otherwise it makes a virtual environment in VENV_DIR (once), pip-installs requirements.txt into it
and prints the environment's interpreter. pip is configured by the environment as usual (PIP_INDEX_URL,
PIP_FIND_LINKS for a local wheel cache, proxies). pip's own output goes to stderr, so stdout holds
only the path. Exits non-zero with the reason when there is no such Python (no venv module, or pip
could not install the packages, e.g. offline).

The broker's tests use it (cli/tests/process.rs, tests/tests/all/reflection.rs), so the logic that
finds or installs grpcio lives here only.
"""

import fcntl
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The import names of the packages in requirements.txt.
MODULES = "grpc, grpc_tools, grpc_reflection, grpc_health"


def imports_everything(python):
    probe = [python, "-c", f"import {MODULES}"]
    try:
        done = subprocess.run(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # no such interpreter (yet)
        return False
    return done.returncode == 0


def run(command, what):
    # pip's progress goes to stderr: stdout is for the interpreter's path alone.
    if subprocess.run(command, stdout=sys.stderr).returncode != 0:
        sys.exit(f"bootstrap: {what} failed")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if imports_everything(sys.executable):
        print(sys.executable)
        return
    venv = os.path.abspath(sys.argv[1])
    python = os.path.join(venv, "bin", "python")
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    # Two test runs may bootstrap at once: the second waits for the first, then finds it done.
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not imports_everything(python):
            if not os.path.exists(python):
                run([sys.executable, "-m", "venv", venv], f"{sys.executable} -m venv {venv}")
            requirements = os.path.join(HERE, "requirements.txt")
            pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            run(pip + ["-r", requirements], f"pip install -r {requirements}")
            if not imports_everything(python):
                sys.exit(f"bootstrap: {python} cannot import {MODULES} after installing them")
    print(python)


if __name__ == "__main__":
    main()
