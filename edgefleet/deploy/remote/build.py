"""Build a venv release on the device in one process (sent ahead of `builder` and `receiver`).

Hard links into objects/ (copies for the files meant to be edited on the device; the host's
.pyc files among them when it could compile them), the link to the packages, else the payload
byte-compiled here, then one rename into place: no `ln` process per file
(see benchmarks/RESULTS.md for what that saved).
"""

from __future__ import annotations

import os


def build(spec: dict) -> None:
    """Build releases/<id> from `spec`: tmp, final, objects, site, links [[sha256, path]], copies
    [path] (copied instead of linked), compile."""
    import shutil

    tmp = spec["tmp"]
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    copies = set(spec.get("copies", ()))
    for sha, rel in spec["links"]:
        dest = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if rel in copies:  # meant to be edited on the device: an edit must not reach the object
            shutil.copyfile(os.path.join(spec["objects"], sha), dest)
            os.chmod(dest, 0o644)
            os.utime(dest, (0, 0))  # the verified mark (deploy/converge.py): a later edit moves it
        else:
            os.link(os.path.join(spec["objects"], sha), dest)
    os.symlink(spec["site"], os.path.join(tmp, "site"))
    if spec["compile"]:
        import compileall

        compileall.compile_dir(os.path.join(tmp, "payload"), quiet=1, stripdir=tmp, prependdir=spec["final"])
    for top, _, _ in os.walk(tmp, topdown=False):  # the verified mark on its directories too
        os.utime(top, (0, 0))
    os.rename(tmp, spec["final"])
    os.utime(spec["final"], (0, 0))
